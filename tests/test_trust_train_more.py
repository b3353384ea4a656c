"""More of the training-run lifecycle: the order of log and checkpoint, diverged weights, storage
errors outside the run, the lock after a SIGKILL with forked children, resume checks (config keys
inside ``data.train``, warned keys, another number of processes), the final/latest label, best.pt
only from validation, Ctrl-C in the demo."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

import boxsup_ext.train as trainer
from boxsup_ext.train import main as train_main
from boxsup_ext.utils import InputError, run_cli
from test_train_e2e import REPO, boxsup_run, cli_args, read_log, synthetic  # noqa: F401 (fixtures)
from test_trust_train import finished_copy, one_line_error, run_train, snapshot  # noqa: F401 (fixtures)


class _Killed(BaseException):
    """Stands for a SIGKILL at that point (nothing after it runs)."""


# ---------------------------------------------------------------------------------------------
# Finding 1: the epoch's log entry is written before its checkpoint


def test_a_kill_around_the_checkpoint_never_loses_the_epochs_log_entry(synthetic, finished_copy, capsys, monkeypatch):
    real = trainer.save_checkpoint
    args = cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"])

    def dies(before_write):
        def save(path, checkpoint):
            if checkpoint["epoch"] == 3 and checkpoint["step"] == 0 and path.name == "latest.pt":
                if before_write:
                    raise _Killed
                real(path, checkpoint)
                raise _Killed
            real(path, checkpoint)
        return save

    # Killed before the checkpoint: the entry of epoch 3 is there, the checkpoint is epoch 2's.
    monkeypatch.setattr(trainer, "save_checkpoint", dies(before_write=True))
    with pytest.raises(_Killed):
        train_main(args)
    assert [e["epoch"] for e in read_log(finished_copy)] == [1, 2, 3]
    assert torch.load(finished_copy / "checkpoints" / "latest.pt", weights_only=True)["epoch"] == 2
    # The resume drops that entry, trains epoch 3 again and is killed right after its checkpoint.
    monkeypatch.setattr(trainer, "save_checkpoint", dies(before_write=False))
    with pytest.raises(_Killed):
        train_main(args)
    assert [e["epoch"] for e in read_log(finished_copy)] == [1, 2, 3]
    assert torch.load(finished_copy / "checkpoints" / "latest.pt", weights_only=True)["epoch"] == 3
    # Nothing left to train; the summary (the 2-epoch run's was there) is written for 3 epochs.
    monkeypatch.setattr(trainer, "save_checkpoint", real)
    status, err = run_train(args, capsys)
    assert status == 0 and err.endswith("nothing to do"), err
    assert [e["epoch"] for e in read_log(finished_copy)] == [1, 2, 3]
    summary = json.loads((finished_copy / "metrics" / "train_summary.json").read_text())
    assert summary["epochs"] == 3 and summary["final_val_miou"] == read_log(finished_copy)[2]["val_miou"]


# ---------------------------------------------------------------------------------------------
# Finding 7: weights that became non-finite never reach a checkpoint


def test_nan_weights_after_a_finite_loss_stop_without_touching_the_checkpoints(synthetic, finished_copy, capsys, monkeypatch):
    before = snapshot(finished_copy / "checkpoints"), (finished_copy / "log.jsonl").read_bytes()
    real = trainer.backward_step
    steps = []

    def step_then_poison(state, loss):
        real(state, loss)
        steps.append(1)
        if len(steps) == 3:  # the last step of epoch 3 (10 images, batches of 4)
            with torch.no_grad():
                next(trainer.unwrap_model(state.model).parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(trainer, "backward_step", step_then_poison)
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"]), capsys))
    assert "weights became NaN or infinite" in err and "epoch 3" in err and "latest.pt still holds the last good state" in err
    assert (snapshot(finished_copy / "checkpoints"), (finished_copy / "log.jsonl").read_bytes()) == before


class _SkippingScaler:
    """A GradScaler stand-in (the real one needs CUDA): skips the step of a non-finite loss."""

    def __init__(self):
        self.skipped = 0

    def scale(self, loss):
        self._finite = bool(torch.isfinite(loss.detach()))
        return loss if self._finite else loss.detach().requires_grad_()

    def step(self, optimizer):
        if self._finite:
            optimizer.step()
        else:
            self.skipped += 1

    def update(self):
        pass

    def state_dict(self):
        return {}


def test_amp_overflow_is_left_to_the_grad_scaler(synthetic, finished_copy, capsys, monkeypatch):
    real_build, real_loss = trainer.build_state, trainer.forward_loss
    scaler, calls = _SkippingScaler(), []

    def build_with_scaler(*args, **kwargs):
        state = real_build(*args, **kwargs)
        state.scaler = scaler
        return state

    def overflow_once(state, images, labels):
        state.scaler = None  # the real forward in fp32 (CPU), then the scaler back
        try:
            loss = real_loss(state, images, labels)
        finally:
            state.scaler = scaler
        calls.append(1)
        return loss * float("inf") if len(calls) == 2 else loss

    monkeypatch.setattr(trainer, "build_state", build_with_scaler)
    monkeypatch.setattr(trainer, "forward_loss", overflow_once)
    status, err = run_train(cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"]), capsys)
    assert status == 0, err
    assert scaler.skipped == 1
    entry = read_log(finished_copy)[2]
    assert entry["epoch"] == 3 and entry["loss"] is not None and entry["loss"] < float("inf")


# ---------------------------------------------------------------------------------------------
# Finding 9: storage errors


def test_full_disk_before_any_checkpoint_does_not_promise_a_resume(synthetic, tmp_path, capsys, monkeypatch):
    import boxsup_ext.training.logbook as logbook

    def no_space(path, mode="wb"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(logbook, "atomic_write", no_space)
    run_dir = tmp_path / "fresh"
    err = one_line_error(*run_train(cli_args(synthetic, run_dir, epochs=1), capsys))
    assert "No space left on device; training stopped" in err
    assert "--resume" not in err and "latest.pt" not in err and "run it again" in err


def test_permission_error_outside_the_run_directory_is_not_a_storage_stop(synthetic, tmp_path, monkeypatch):
    def unreadable(config):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "dataset" / "image.png"))

    monkeypatch.setattr(trainer, "open_data", unreadable)
    with pytest.raises(PermissionError):
        run_cli(train_main, cli_args(synthetic, tmp_path / "run", epochs=1))


# ---------------------------------------------------------------------------------------------
# Finding 10: one log reader; TensorBoard errors are not hidden


def test_epoch_log_drops_a_torn_last_line(tmp_path):
    from boxsup_ext.training.logbook import EpochLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "lo')
    assert EpochLog(path).entries == [{"epoch": 1, "loss": 0.5}]
    path.write_text('{"epoch": 1, "lo\n{"epoch": 2}\n')
    with pytest.raises(InputError, match="log.jsonl:1 is not valid JSON"):
        EpochLog(path)


def test_unwritable_tensorboard_folder_is_not_silenced(tmp_path, monkeypatch):
    from boxsup_ext.training.logbook import EpochLog

    def refuse(logdir):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), logdir)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=refuse))
    with pytest.raises(PermissionError):
        EpochLog(tmp_path / "log.jsonl", tmp_path / "tensorboard")


# ---------------------------------------------------------------------------------------------
# Findings 11, 12, 19: resume checks


def test_run_recorded_before_a_source_key_existed_still_resumes(synthetic, finished_copy, capsys):
    record = json.loads((finished_copy / "run.json").read_text())
    del record["config"]["data"]["train"][0]["categories"]
    (finished_copy / "run.json").write_text(json.dumps(record))
    status, err = run_train(cli_args(synthetic, finished_copy, extra=["--resume"]), capsys)
    assert status == 0 and err.endswith("nothing to do"), err
    changed = cli_args(synthetic, finished_copy, extra=["--resume", "--set", "data.train.0.limit=3"])
    assert "data.train.0.limit: 0 -> 3" in one_line_error(*run_train(changed, capsys))


def test_resume_with_another_relabel_batch_warns_that_it_is_not_exact(synthetic, finished_copy, capsys):
    status, err = run_train(cli_args(synthetic, finished_copy, extra=["--resume", "--set", "relabel.batch_images=3"]), capsys)
    assert status == 0 and err.endswith("nothing to do"), err
    assert "warning" in err and "relabel.batch_images: 8 -> 3" in err and "not with the bits" in err


def test_resume_with_another_number_of_processes_warns(synthetic, finished_copy, capsys):
    from boxsup_ext.training.distributed import DistContext

    config = trainer.resolve_config(trainer.build_arg_parser().parse_args(cli_args(synthetic, finished_copy, extra=["--resume"])))
    checkpoint = torch.load(finished_copy / "checkpoints" / "latest.pt", weights_only=True)
    checkpoint["rng"] = checkpoint["rng"] * 2  # saved by two processes
    training, _ = trainer.open_data(config)
    capsys.readouterr()
    trainer.build_state(config, DistContext(0, 1, 0, torch.device("cpu")), training, checkpoint)
    err = capsys.readouterr().err
    assert "saved by 2 process(es), this run has 1" in err and "not exact" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Finding 6: final or latest from the checkpoint


def test_checkpoint_label_comes_from_the_checkpoint(finished_copy):
    from boxsup_ext.run_dir import RunDir, run_checkpoint

    run = RunDir(finished_copy)
    assert run_checkpoint(run) == (run.latest, "final")
    checkpoint = torch.load(run.latest, weights_only=True)
    checkpoint["config"]["train"]["epochs"] = 4  # resumed for 4 epochs after finishing, stopped in epoch 3
    checkpoint["step"] = 1
    torch.save(checkpoint, run.latest)
    assert run.summary_file.is_file()  # the first finish's summary
    assert run_checkpoint(run) == (run.latest, "latest")
    checkpoint["config"]["train"]["epochs"] = 2
    torch.save(checkpoint, run.latest)
    assert run_checkpoint(run)[1] == "latest"  # a step of a further epoch done


# ---------------------------------------------------------------------------------------------
# Finding 17: best.pt only from a validated epoch


def test_no_best_checkpoint_without_validation(synthetic, tmp_path):
    run_dir = tmp_path / "noval"
    assert train_main(cli_args(synthetic, run_dir, epochs=1, extra=["--set", "data.val.root="])) == 0
    assert (run_dir / "checkpoints" / "latest.pt").is_file() and not (run_dir / "checkpoints" / "best.pt").exists()


# ---------------------------------------------------------------------------------------------
# Finding 16: validation speaks the evaluator's names


def test_validate_uses_the_evaluators_metric_names(synthetic):
    from boxsup_ext.data import open_dataset
    from boxsup_ext.models import build_model
    from boxsup_ext.training.distributed import DistContext

    val = open_dataset(synthetic.dataset, "val", kind="synthetic")
    model = build_model("tiny_fcn", val.num_classes, width=4)
    result = trainer.validate(model, val, 2, DistContext(0, 1, 0, torch.device("cpu")), False)
    assert set(result) == {"miou", "per_class_iou", "pixel_accuracy"}


# ---------------------------------------------------------------------------------------------
# Finding 14: the run lock after a SIGKILL of a trainer with forked children


_FORKING_HOLDER = textwrap.dedent("""
    import os, signal, sys, time
    from boxsup_ext.training.lock import RunLock
    RunLock(sys.argv[1]).acquire()
    child = os.fork()
    if child == 0:  # a DataLoader worker that outlives its trainer for a while (not holding the output pipes)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        time.sleep(30)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_forked_children_do_not_keep_a_killed_trainers_lock(tmp_path):
    from boxsup_ext.training.lock import RunLock

    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", _FORKING_HOLDER, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert done.returncode == -9, done.stderr[-2000:]
    child = int(done.stdout.strip())
    try:
        started = time.monotonic()
        with RunLock(run_dir):
            pass
        assert time.monotonic() - started < 2.0  # taken at once, not after the child exits
    finally:
        os.kill(child, signal.SIGKILL)


def test_lock_of_an_exited_holder_is_waited_for(tmp_path, monkeypatch):
    import fcntl

    import boxsup_ext.training.lock as lock

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(run_dir / '.lock')!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"{dead_pid}\\n")
        print("locked", flush=True)
        time.sleep(1.0)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with lock.RunLock(run_dir):
            pass
        assert holder.poll() is not None  # it was waited for
        monkeypatch.setattr(lock, "DEAD_HOLDER_WAIT_S", 0.3)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{dead_pid}\n".encode())
        with pytest.raises(InputError, match=f"left by trainer pid {dead_pid}, which has exited"):
            lock.RunLock(run_dir).acquire()
        os.close(fd)
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------------------------------
# Findings 2, 20: the demo


def test_ctrl_c_in_the_demo_is_one_line_and_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import boxsup_ext.proposals.synthetic_setup as setup
    from boxsup_ext.demo import main as demo_main

    def stopped(config, resume=False):
        raise trainer.StopRequested

    monkeypatch.setattr(setup, "prepare_synthetic", lambda *a, **k: None)
    monkeypatch.setattr(trainer, "train", stopped)
    capsys.readouterr()
    assert run_cli(demo_main, ["--out", str(tmp_path / "demo"), "--modes", "mask"]) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "the same command again" in err, err


def test_the_log_says_which_loggers_are_in_use(tmp_path, monkeypatch):
    import sys

    from boxsup_ext.training.logbook import EpochLog

    assert EpochLog(tmp_path / "a.jsonl").loggers == "a.jsonl"
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed: the import fails
    missing = EpochLog(tmp_path / "b.jsonl", tmp_path / "tb")
    assert "not installed" in missing.loggers and "boxsup_ext[tensorboard]" in missing.loggers
    assert not (tmp_path / "tb").exists()
