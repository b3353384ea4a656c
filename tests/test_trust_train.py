"""Trust catalogue of the training-run lifecycle (issue 9): one writer per run directory, no code
run from a checkpoint, a finished run left alone, a full disk or a NaN loss never costing the last
good checkpoint, and one clear line for each bad input of ``train`` and ``demo``.

Kinds of bad input and fault tried here (26): a second trainer on a locked run, fresh and with
``--resume``; a malicious checkpoint through ``evaluate --checkpoint``,
``load_model_from_checkpoint``, ``train --resume`` and ``model.init_checkpoint``; a truncated
checkpoint; ``--resume`` of a finished run and with fewer epochs; a run.json from before a config
key existed; a full disk while checkpointing and while logging; a run directory that is a file and one below a file;
a NaN loss; a corrupt ``run.json``; ``--resume`` of an empty and of a missing folder; SIGTERM while
relabeling; Ctrl-C reaching the DataLoader workers; a broken annotation (with and without
``--skip-bad``); ``demo --modes bogus``, ``--num-train 0``, ``--num-val -1``, a bad ``--set``,
``--out`` a file, a changed dataset size, and a second demo. SIGKILL (with its stale lock), SIGTERM
and SIGINT resumes are in test_train_e2e.py, config values in test_config.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boxsup_ext.train import main as train_main
from boxsup_ext.utils import run_cli
from test_train_e2e import REPO, assert_same_run, boxsup_run, cli_args, read_log, synthetic  # noqa: F401 (fixtures)


def run_train(args, capsys):
    """Exit status and stderr of the train CLI (through run_cli, as ``python -m`` runs it)."""
    capsys.readouterr()
    status = run_cli(train_main, args)
    return status, capsys.readouterr().err.strip()


def contents(folder):
    return {path: data for path, (data, _) in snapshot(folder).items()}


def one_line_error(status, err):
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def snapshot(folder):
    """Bytes and modification time of every file below ``folder``."""
    return {p.relative_to(folder): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def finished_copy(boxsup_run, tmp_path):
    """A private copy of the finished two-epoch run (tests may damage it)."""
    return Path(shutil.copytree(boxsup_run, tmp_path / "copy"))


# ---------------------------------------------------------------------------------------------
# 1. One trainer per run directory


def test_second_trainer_on_a_run_stops_naming_the_holder(synthetic, boxsup_run, tmp_path, capsys):
    run_dir = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=str(REPO), BOXSUP_FAULT_AT="1:1:SIGSTOP")  # holds the lock, paused
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "boxsup_ext.train"] + cli_args(synthetic, run_dir),
                                 cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _, status = os.waitpid(first.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), (tmp_path / "first.log").read_text()[-2000:]
        err = one_line_error(*run_train(cli_args(synthetic, run_dir), capsys))
        assert f"pid {first.pid}" in err and "in use by another trainer" in err
        err = one_line_error(*run_train(cli_args(synthetic, run_dir, extra=["--resume"]), capsys))
        assert f"pid {first.pid}" in err
    finally:
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert_same_run(boxsup_run, run_dir)  # the first trainer was undisturbed
    assert not (run_dir / ".lock").exists()


# ---------------------------------------------------------------------------------------------
# 9. Loading never runs code


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_meta": {"name": "tiny_fcn"}, "label_state": {}, "payload": _Exploit(marker)}, path)
    return path, marker


def test_malicious_checkpoint_is_refused_by_every_loader(synthetic, finished_copy, evil_checkpoint, tmp_path, capsys):
    from boxsup_ext.evaluate import main as evaluate_main
    from boxsup_ext.models import load_model_from_checkpoint
    from boxsup_ext.utils import InputError

    evil, marker = evil_checkpoint
    with pytest.raises(InputError, match="holds objects other than tensors and plain types"):
        load_model_from_checkpoint(evil)
    capsys.readouterr()
    status = run_cli(evaluate_main, ["--checkpoint", str(evil), "--dataset", str(synthetic.dataset), "--kind", "synthetic",
                                     "--out", str(tmp_path / "eval"), "--no-progress"])
    err = one_line_error(status, capsys.readouterr().err.strip())
    assert str(evil) in err
    shutil.copy(evil, finished_copy / "checkpoints" / "latest.pt")
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, extra=["--resume"]), capsys))
    assert "latest.pt holds objects other than tensors" in err
    err = one_line_error(*run_train(cli_args(synthetic, tmp_path / "init", extra=["--set", f"model.init_checkpoint={evil}"]), capsys))
    assert str(evil) in err
    assert not marker.exists()


def test_truncated_checkpoint_is_one_line(synthetic, finished_copy, capsys):
    latest = finished_copy / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, extra=["--resume"]), capsys))
    assert "latest.pt is not readable" in err


# ---------------------------------------------------------------------------------------------
# 4. A finished run resumes to nothing to do


@pytest.mark.parametrize("epochs", [2, 1])
def test_resume_of_a_finished_run_changes_nothing(synthetic, finished_copy, capsys, epochs):
    before = snapshot(finished_copy)
    status, err = run_train(cli_args(synthetic, finished_copy, epochs=epochs, extra=["--resume"]), capsys)
    assert status == 0
    assert err.endswith("nothing to do") and "\n" not in err, err
    assert snapshot(finished_copy) == before


def test_run_recorded_before_a_config_key_existed_still_resumes(synthetic, finished_copy, capsys):
    """A run.json written before ``data.skip_bad`` existed: the missing key counts as its default."""
    record = json.loads((finished_copy / "run.json").read_text())
    del record["config"]["data"]["skip_bad"]
    (finished_copy / "run.json").write_text(json.dumps(record))
    status, err = run_train(cli_args(synthetic, finished_copy, extra=["--resume"]), capsys)
    assert status == 0 and err.endswith("nothing to do"), err


# ---------------------------------------------------------------------------------------------
# 11. Unwritable outputs and a full disk


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(synthetic, finished_copy):
    latest = finished_copy / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    limit = len(before) // 2  # room for labels and logs, not for a checkpoint

    def small_disk():  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "boxsup_ext.train"] + cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"]),
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          preexec_fn=small_disk, timeout=300)
    err = one_line_error(done.returncode, done.stderr.strip())
    assert f"cannot write checkpoint {latest}" in err and "previous checkpoint there is kept" in err
    assert latest.read_bytes() == before
    assert not list(latest.parent.glob(".*.tmp"))
    # epoch 3 was logged before its checkpoint failed; a --resume (from epoch 2) drops that entry
    assert [e["epoch"] for e in read_log(finished_copy)] == [1, 2, 3]


def test_full_disk_while_logging_is_one_line(synthetic, finished_copy, capsys, monkeypatch):
    import errno

    import boxsup_ext.training.logbook as logbook

    before = snapshot(finished_copy / "checkpoints")

    def no_space(path, mode="wb"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(logbook, "atomic_write", no_space)
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"]), capsys))
    assert f"{finished_copy / 'log.jsonl'}: No space left on device; training stopped" in err and "latest.pt" in err
    assert snapshot(finished_copy / "checkpoints") == before


def test_run_dir_that_is_a_file_is_one_line(synthetic, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert "is a file" in one_line_error(*run_train(cli_args(synthetic, a_file), capsys))
    assert "is a file" in one_line_error(*run_train(cli_args(synthetic, a_file / "run"), capsys))
    assert a_file.read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------
# 12. A NaN loss stops training and keeps the last good checkpoint


def test_nan_loss_stops_without_touching_the_checkpoints(synthetic, finished_copy, capsys, monkeypatch):
    import torch.nn.functional as F

    before = snapshot(finished_copy / "checkpoints"), (finished_copy / "log.jsonl").read_bytes()
    real = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, epochs=3, extra=["--resume"]), capsys))
    assert "training loss is nan at epoch 3 step 1" in err and "train.lr" in err
    assert (snapshot(finished_copy / "checkpoints"), (finished_copy / "log.jsonl").read_bytes()) == before


# ---------------------------------------------------------------------------------------------
# 15. Run-directory records, --resume on nothing, signals while relabeling, --skip-bad


def test_corrupt_run_json_is_one_line(synthetic, finished_copy, capsys):
    (finished_copy / "run.json").write_text('{"config": {"train": ')
    err = one_line_error(*run_train(cli_args(synthetic, finished_copy, extra=["--resume"]), capsys))
    assert "run.json is not readable JSON" in err


@pytest.mark.parametrize("exists", [True, False], ids=["empty", "missing"])
def test_resume_of_an_empty_folder_says_it_starts_fresh(synthetic, tmp_path, capsys, exists):
    run_dir = tmp_path / "nothing"
    if exists:
        run_dir.mkdir()
    status, err = run_train(cli_args(synthetic, run_dir, epochs=1, extra=["--resume"]), capsys)
    assert status == 0
    assert f"{run_dir} holds no checkpoint to resume from; starting a fresh run there" in err
    assert [e["epoch"] for e in read_log(run_dir)] == [1]


def test_signal_while_relabeling_says_so_and_resumes_exactly(synthetic, boxsup_run, tmp_path, capsys, monkeypatch):
    import boxsup_ext.training.labels as label_rounds

    run_dir = tmp_path / "relabel_stop"
    real = label_rounds.relabel_batch
    calls = []

    def relabel_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second batch of epoch 2
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(label_rounds, "relabel_batch", relabel_then_signal)
    args = cli_args(synthetic, run_dir, extra=["--set", "relabel.batch_images=4"])
    status, err = run_train(args, capsys)
    assert status == 130
    assert "stopped by signal before the training steps of epoch 2" in err and "--resume continues" in err
    assert [e["epoch"] for e in read_log(run_dir)] == [1]
    monkeypatch.setattr(label_rounds, "relabel_batch", real)
    assert run_train(args + ["--resume"], capsys)[0] == 0
    assert_same_run(boxsup_run, run_dir)


def test_skip_bad_exists_where_the_message_suggests_it(synthetic, tmp_path, capsys):
    dataset = Path(shutil.copytree(synthetic.dataset, tmp_path / "dataset"))
    broken = sorted((dataset / "Annotations").glob("train_*.xml"))[0]
    broken.write_text("<annotation><object>")
    args = cli_args(synthetic, tmp_path / "run", mode="mask", epochs=1,
                    extra=["--set", f"data.train.0.root={dataset}", "--set", f"data.val.root={dataset}"])
    err = one_line_error(*run_train(args, capsys))
    assert broken.name in err and "--skip-bad" in err
    status, _ = run_train(args + ["--skip-bad"], capsys)
    assert status == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["data"]["skip_bad"] is True


# ---------------------------------------------------------------------------------------------
# 15/16. demo: bad arguments before any write; a second demo reuses everything


DEMO_ARGS = ["--num-train", "6", "--num-val", "3", "--size", "32", "--workers", "1", "--modes", "rectangles,mask",
             "--set", "train.epochs=1", "--set", "model.width=4", "--set", "data.crop_size=32", "--set", "run.threads=1"]


@pytest.mark.parametrize("bad, message", [
    (["--modes", "rectangles,bogus"], "--modes: unknown trainer mode(s) bogus"),
    (["--num-train", "0"], "--num-train must be at least 1, got 0"),
    (["--num-val", "-1"], "--num-val must be at least 1"),
    (["--set", "model.dropout=2"], "model.dropout must be in [0, 1]"),
])
def test_demo_bad_arguments_write_nothing(tmp_path, capsys, bad, message):
    from boxsup_ext.demo import main as demo_main

    out = tmp_path / "demo"
    capsys.readouterr()
    status = run_cli(demo_main, ["--out", str(out)] + DEMO_ARGS + bad)
    err = one_line_error(status, capsys.readouterr().err.strip())
    assert message in err
    assert not out.exists()


def test_demo_out_that_is_a_file_is_one_line(tmp_path, capsys):
    from boxsup_ext.demo import main as demo_main

    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    err = one_line_error(run_cli(demo_main, ["--out", str(tmp_path / "file")] + DEMO_ARGS), capsys.readouterr().err.strip())
    assert "--out" in err and "is a file" in err


def test_demo_twice_reuses_data_and_runs_and_prints_the_same_table(tmp_path, capsys):
    from boxsup_ext.demo import main as demo_main

    out = tmp_path / "demo"

    def table(text):
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("mode "))
        return lines[start : start + 3]

    capsys.readouterr()
    assert demo_main(["--out", str(out)] + DEMO_ARGS) == 0
    first = table(capsys.readouterr().out)
    data, runs = contents(out / "data"), snapshot(out / "runs")
    assert demo_main(["--out", str(out)] + DEMO_ARGS) == 0
    captured = capsys.readouterr()
    assert table(captured.out) == first
    assert captured.err.count("nothing to do") == 2
    # Nothing was rebuilt (the proposal store rewrites its manifest with the same bytes) or retrained.
    assert contents(out / "data") == data and snapshot(out / "runs") == runs
    err = one_line_error(run_cli(demo_main, ["--out", str(out)] + DEMO_ARGS + ["--num-train", "7"]),
                         capsys.readouterr().err.strip())
    assert "made with other settings" in err and "num_train 6 (asked 7)" in err
    # Other --set values: the demo's own advice (it has no --run-dir)
    err = one_line_error(run_cli(demo_main, ["--out", str(out)] + DEMO_ARGS + ["--set", "train.lr=0.5"]),
                         capsys.readouterr().err.strip())
    assert "use another --out" in err and "train.lr" in err and "--run-dir" not in err


# ---------------------------------------------------------------------------------------------
# 2. Ctrl-C reaches the DataLoader workers too


class _InterruptedSamples(torch.utils.data.Dataset):
    """Each sample sends SIGINT to the process that loads it, as Ctrl-C does to a whole group."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), signal.SIGINT)
        return torch.tensor([index])


def test_loader_workers_leave_ctrl_c_to_the_trainer():
    from boxsup_ext.training.data import epoch_loader

    loader = epoch_loader(_InterruptedSamples(), [[0, 1], [2, 3]], workers=1, seed=0, epoch=1, pin_memory=False)
    assert [batch.flatten().tolist() for batch in loader] == [[0, 1], [2, 3]]
