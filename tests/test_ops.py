"""The compiled ops against their float64 references, opcheck, pycocotools, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boxsup_ext import ops
from boxsup_ext import reference as ref

CUDA = pytest.mark.skipif(not torch.cuda.is_available() or not ops.build_info()["cuda_compiled"],
                          reason="needs a CUDA device and CUDA kernels")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_image(seed: int, height: int, width: int, num_candidates: int, num_boxes: int, num_classes: int,
                 dtype=torch.float32, per_pixel: bool = False):
    """Random candidates (incl. empty and whole-image ones), boxes (incl. outside / zero-area), logits."""
    g = torch.Generator().manual_seed(seed)
    if per_pixel:
        units = ops.pixel_units(height, width)
        masks = torch.rand(num_candidates, height, width, generator=g) < 0.3
        members = ops.pack_masks(masks)
    else:
        num_units = int(torch.randint(1, 150, (1,), generator=g))
        units = torch.randint(0, num_units, (height, width), generator=g)
        if torch.rand(1, generator=g) < 0.5:
            units = units.to(torch.int32)
        spare_words = int(torch.randint(0, 2, (1,), generator=g))  # members may be wider than needed
        words = ref.num_words(num_units) + spare_words
        bits = torch.rand(num_candidates, words * 64, generator=g) < torch.rand(num_candidates, 1, generator=g)
        bits[:, num_units:] &= torch.rand(num_candidates, 1, generator=g) < 0.3  # bits of absent units
        if num_candidates > 0:
            bits[0] = False  # an empty candidate
        if num_candidates > 1:
            bits[1] = True  # the whole image
        members = ref.pack_bits(bits)
    logits = (torch.randn(num_classes, height, width, generator=g) * 4).to(dtype)
    centre = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width, height]) * 1.6 - 0.3 * torch.tensor(
        [width, height]
    )
    size = torch.rand(num_boxes, 2, generator=g) * torch.tensor([width, height]) * 1.2
    size[torch.rand(num_boxes, generator=g) < 0.15] = 0.0  # zero-area boxes
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    if torch.rand(1, generator=g) < 0.5:
        boxes = boxes.round()
    labels = torch.randint(0, num_classes, (num_boxes,), generator=g)
    return units, members, logits, boxes, labels


def assert_costs_close(got: ops.ProposalCosts, want: ops.ProposalCosts) -> None:
    assert torch.equal(got.area.cpu(), want.area)
    torch.testing.assert_close(got.bbox.cpu(), want.bbox, rtol=0, atol=0)
    torch.testing.assert_close(got.iou_box.cpu(), want.iou_box, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.iou_mask.cpu(), want.iou_mask, rtol=1e-5, atol=1e-6)
    got_ce, want_ce = got.mean_ce.cpu(), want.mean_ce
    assert torch.equal(torch.isinf(got_ce), torch.isinf(want_ce))
    finite = torch.isfinite(want_ce)
    torch.testing.assert_close(got_ce[finite], want_ce[finite], rtol=1e-4, atol=1e-4)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    height=st.integers(1, 40),
    width=st.integers(1, 140),
    num_candidates=st.integers(0, 12),
    num_boxes=st.integers(0, 5),
    num_classes=st.integers(1, 7),
    dtype=st.sampled_from(DTYPES),
    per_pixel=st.booleans(),
)
def test_proposal_costs_matches_reference(seed, height, width, num_candidates, num_boxes, num_classes, dtype,
                                          per_pixel):
    args = random_image(seed, height, width, num_candidates, num_boxes, num_classes, dtype, per_pixel)
    got = ops.proposal_costs(*args)
    want = ref.proposal_costs(*args)
    assert got.area.dtype == torch.int64 and got.bbox.dtype == torch.float32
    assert got.mean_ce.shape == (num_candidates, num_boxes)
    assert_costs_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_proposal_costs_on_device(device, dtype):
    for seed in range(4):
        args = [t.to(device) for t in random_image(seed, 37, 70, 9, 3, 5, dtype)]
        got = ops.proposal_costs(*args)
        assert got.area.device.type == device
        assert_costs_close(got, ref.proposal_costs(*[t.cpu() for t in args]))


def test_one_pixel_image_and_known_values():
    units = torch.zeros(1, 1, dtype=torch.int64)
    members = torch.tensor([[1], [0]], dtype=torch.int64)
    logits = torch.tensor([[[0.0]], [[1.0]]])
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    labels = torch.tensor([1, 0])
    out = ops.proposal_costs(units, members, logits, boxes, labels)
    assert out.area.tolist() == [1, 0]
    assert out.bbox[0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out.iou_box[0].tolist() == [1.0, 0.0] and out.iou_box[1].tolist() == [0.0, 0.0]
    assert out.iou_mask[0].tolist() == [1.0, 0.0]
    lse = float(torch.logsumexp(torch.tensor([0.0, 1.0]), 0))
    assert out.mean_ce[0].tolist() == pytest.approx([lse - 1.0, lse], rel=1e-6)
    assert torch.isinf(out.mean_ce[1]).all()


def test_batched_equals_per_image():
    images = [random_image(seed, h, w, n, m, 6, dtype)
              for seed, (h, w, n, m, dtype) in enumerate([(17, 65, 7, 3, torch.float32), (1, 1, 2, 1, torch.float16),
                                                         (40, 33, 0, 2, torch.float32), (23, 129, 11, 0, torch.bfloat16),
                                                         (30, 64, 5, 4, torch.float32)])]
    batched = ops.proposal_costs_batched(*[list(column) for column in zip(*images)])
    assert len(batched) == len(images)
    for args, got in zip(images, batched):
        want = ops.proposal_costs(*args)
        for field in want._fields:
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert ops.proposal_costs_batched([], [], [], [], []) == []


@pytest.mark.parametrize("device", DEVICES)
def test_batched_on_device(device):
    images = [[t.to(device) for t in random_image(seed, 20 + seed, 50 - seed, 6, 2, 4)] for seed in range(5)]
    batched = ops.proposal_costs_batched(*[list(column) for column in zip(*images)])
    for args, got in zip(images, batched):
        assert_costs_close(got, ref.proposal_costs(*[t.cpu() for t in args]))


def test_opcheck():
    for seed, dtype in enumerate(DTYPES):
        args = random_image(seed, 19, 70, 6, 3, 5, dtype)
        torch.library.opcheck(torch.ops.boxsup.proposal_costs.default, args)
        torch.library.opcheck(torch.ops.boxsup.proposal_costs_batched.default,
                              tuple([a, a] for a in args))
    units, members, _, boxes, labels = random_image(7, 12, 13, 5, 3, 4)
    torch.library.opcheck(torch.ops.boxsup.paint_labels.default, (units, members, torch.tensor([0, -1, 4]),
                                                                    torch.tensor([1, 2, 3]), boxes))
    torch.library.opcheck(torch.ops.boxsup.paint_labels.default, (units, members, torch.tensor([2, 1, 3]),
                                                                    torch.tensor([1, 2, 3]), None))
    masks = torch.rand(4, 130) > 0.5
    torch.library.opcheck(torch.ops.boxsup.pack_masks.default, (masks,))
    torch.library.opcheck(torch.ops.boxsup.unpack_masks.default, (ops.pack_masks(masks), 130))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 70), h=st.integers(1, 20), w=st.integers(1, 70))
def test_pack_unpack_round_trip(seed, n, h, w):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, h, w, generator=g) < 0.4
    packed = ops.pack_masks(masks)
    assert packed.shape == (n, ref.num_words(h * w))
    assert torch.equal(packed, ref.pack_masks(masks))
    assert torch.equal(ops.unpack_masks(packed, (h, w)), masks)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 70), h=st.integers(1, 25), w=st.integers(1, 70))
def test_masks_to_units_is_exact_and_minimal(seed, n, h, w):
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, h, w, generator=g) < torch.rand(n, 1, 1, generator=g)
    units, members = ops.masks_to_units(masks)
    assert torch.equal(ref.unpack_members(units, members), masks)
    distinct_signatures = torch.unique(masks.reshape(n, -1).t(), dim=0).shape[0]
    assert int(units.max()) + 1 == distinct_signatures
    assert members.shape == (n, ref.num_words(distinct_signatures))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 30), w=st.integers(1, 90), n=st.integers(1, 9),
       m=st.integers(0, 6), clip=st.booleans())
def test_paint_labels_matches_reference(seed, h, w, n, m, clip):
    units, members, _, boxes, _ = random_image(seed, h, w, n, m, 3)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randint(-1, n, (m,), generator=g)
    labels = torch.randint(1, 21, (m,), generator=g)
    got = ops.paint_labels(units, members, chosen, labels, boxes if clip else None)
    assert got.dtype == torch.uint8 and got.shape == (h, w)
    assert torch.equal(got, ref.paint_labels(units, members, chosen, labels, boxes if clip else None))


def test_paint_labels_smaller_on_top():
    big = torch.zeros(6, 6, dtype=torch.bool)
    big[:, :] = True
    small = torch.zeros(6, 6, dtype=torch.bool)
    small[2:4, 2:4] = True
    units, members = ops.masks_to_units(torch.stack([small, big]))
    # The small region is listed first but must end on top of the big one.
    out = ops.paint_labels(units, members, torch.tensor([0, 1]), torch.tensor([7, 3]))
    assert (out[small] == 7).all() and (out[~small] == 3).all()
    clipped = ops.paint_labels(units, members, torch.tensor([1]), torch.tensor([5]),
                               torch.tensor([[0.0, 0.0, 3.0, 2.0]]))
    assert int((clipped == 5).sum()) == 6 and int((clipped == 0).sum()) == 30


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True])
def test_unassigned_fills_the_background_left_in_the_box(device, batched):
    """A box without a candidate marks its still-background pixels, those no region covers and
    those a region labelled 0 covers, but never a pixel painted with another class."""
    region = torch.zeros(6, 8, dtype=torch.bool)
    region[:, :4] = True  # box 0's candidate, labelled 0 (background), reaches into box 1
    other = torch.zeros(6, 8, dtype=torch.bool)
    other[:2, 4:] = True  # box 2's candidate, labelled 9, also inside box 1
    units, members = ops.masks_to_units(torch.stack([region, other]))
    boxes = torch.tensor([[0.0, 0.0, 4.0, 6.0], [2.0, 0.0, 8.0, 6.0], [4.0, 0.0, 8.0, 2.0]])
    args = (units.to(device), members.to(device), torch.tensor([0, -1, 1]), torch.tensor([0, 5, 9]), boxes)
    if batched:
        out = ops.paint_labels_batched(*[[a] for a in args], clip=False, unassigned=255)[0].cpu()
    else:
        out = ops.paint_labels(*args, clip=False, unassigned=255).cpu()
    want = torch.zeros(6, 8, dtype=torch.uint8)
    want[:, 2:] = 255  # box 1's rectangle, columns 2..7: background painted by region 0 or by no region
    want[:2, 4:] = 9
    assert torch.equal(out, want)
    assert torch.equal(out, ref.paint_labels(units, members, args[2], args[3], boxes, clip=False, unassigned=255))


def test_against_pycocotools():
    from pycocotools import mask as mask_utils

    g = torch.Generator().manual_seed(3)
    h, w, n = 31, 47, 25
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, h, (1,), generator=g).item(), torch.randint(0, w, (1,), generator=g).item()
        y1, x1 = y0 + torch.randint(1, h, (1,), generator=g).item(), x0 + torch.randint(1, w, (1,), generator=g).item()
        masks[i, y0:y1, x0:x1] = torch.rand(min(y1, h) - y0, min(x1, w) - x0, generator=g) < 0.7
    masks[0] = False
    masks[0, 5, 9] = True
    units, members = ops.masks_to_units(masks)
    boxes = torch.tensor([[3.0, 2.0, 40.0, 20.0], [0.0, 10.0, 12.0, 31.0]])
    out = ops.proposal_costs(units, members, torch.zeros(3, h, w), boxes, torch.tensor([1, 2]))

    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
    coco_bbox = mask_utils.toBbox(rles)  # [x, y, w, h]
    ours = out.bbox.numpy()
    np.testing.assert_allclose(ours[:, :2], coco_bbox[:, :2])
    np.testing.assert_allclose(ours[:, 2:] - ours[:, :2], coco_bbox[:, 2:])

    rect_masks = ref.box_pixel_masks(boxes, h, w).permute(1, 2, 0).numpy().astype(np.uint8)
    rect_rles = mask_utils.encode(np.asfortranarray(rect_masks))
    np.testing.assert_allclose(out.iou_mask.numpy(), mask_utils.iou(rles, rect_rles, [0, 0]), rtol=1e-6)
    boxes_xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).double().numpy()
    np.testing.assert_allclose(out.iou_box.numpy(), mask_utils.iou(coco_bbox, boxes_xywh, [0, 0]), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error naming the argument, never a crash.


def good_args():
    return list(random_image(11, 8, 9, 4, 2, 3))


@pytest.mark.parametrize(
    "index, bad, match",
    [
        (0, torch.zeros(8, 9, 1, dtype=torch.int64), "units must have shape"),
        (0, torch.zeros(8, 9, dtype=torch.float32), "units must be int32 or int64"),
        (1, torch.zeros(4, 2, dtype=torch.int32), "members must be int64"),
        (1, torch.zeros(4, dtype=torch.int64), "members must have shape"),
        (2, torch.zeros(3, 8, 9, dtype=torch.float64), "logits must be float32, float16 or bfloat16"),
        (2, torch.zeros(3, 8, 10), "logits must match units"),
        (2, torch.zeros(8, 9), "logits must have shape"),
        (3, torch.zeros(2, 5), "boxes must have shape"),
        (3, torch.zeros(2, 4, dtype=torch.int64), "boxes must be a floating dtype"),
        (4, torch.zeros(3, dtype=torch.int64), "labels must have shape"),
        (4, torch.tensor([0, 3]), r"labels\[1\] = 3 is outside \[0, C\)"),
        (4, torch.tensor([-1, 0]), r"labels\[0\] = -1 is outside"),
    ],
)
def test_bad_arguments_are_named(index, bad, match):
    args = good_args()
    args[index] = bad
    with pytest.raises(RuntimeError, match=match):
        ops.proposal_costs(*args)


def test_unit_ids_beyond_members_width():
    units, members, logits, boxes, labels = good_args()
    units = units.clone()
    units[0, 0] = members.shape[1] * 64
    with pytest.raises(RuntimeError, match="members is narrower than the units need"):
        ops.proposal_costs(units, members, logits, boxes, labels)
    units[0, 0] = -1
    with pytest.raises(RuntimeError, match="negative ids"):
        ops.proposal_costs(units, members, logits, boxes, labels)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_logits(value, dtype):
    units, members, logits, boxes, labels = good_args()
    logits = logits.to(dtype)
    logits[1, 3, 4] = value
    with pytest.raises(RuntimeError, match="logits must be finite"):
        ops.proposal_costs(units, members, logits, boxes, labels)


def test_batched_error_names_the_image():
    images = [good_args(), good_args()]
    images[1][4] = torch.tensor([0, 9])
    with pytest.raises(RuntimeError, match=r"labels \(image 1\)\[1\] = 9"):
        ops.proposal_costs_batched(*[list(column) for column in zip(*images)])
    with pytest.raises(RuntimeError, match="one units, members, logits, boxes and labels tensor per image"):
        ops.proposal_costs_batched([images[0][0]], [], [], [], [])


def test_paint_and_pack_bad_inputs():
    units, members, _, boxes, _ = good_args()
    with pytest.raises(RuntimeError, match=r"chosen\[0\] = 4 is outside \[-1, N\)"):
        ops.paint_labels(units, members, torch.tensor([4, 0]), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match=r"labels\[1\] = 300 does not fit"):
        ops.paint_labels(units, members, torch.tensor([0, 0]), torch.tensor([1, 300]))
    with pytest.raises(RuntimeError, match="boxes must have shape"):
        ops.paint_labels(units, members, torch.tensor([0, 0]), torch.tensor([1, 1]), boxes[:1])
    with pytest.raises(RuntimeError, match="masks must be bool"):
        ops.pack_masks(torch.zeros(2, 3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="length must be in"):
        ops.unpack_masks(torch.zeros(2, 1, dtype=torch.int64), (65,))


@CUDA
@pytest.mark.cuda
def test_devices_must_match():
    units, members, logits, boxes, labels = good_args()
    with pytest.raises(RuntimeError, match="must be on one device"):
        ops.proposal_costs(units.cuda(), members, logits, boxes, labels)


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("clip", [False, True])
def test_cuda_paint_pack_match_cpu(clip):
    units, members, _, boxes, _ = random_image(5, 33, 71, 8, 5, 3)
    chosen, labels = torch.tensor([0, 3, -1, 7, 2]), torch.tensor([1, 2, 3, 4, 5])
    want = ops.paint_labels(units, members, chosen, labels, boxes if clip else None)
    got = ops.paint_labels(units.cuda(), members.cuda(), chosen.cuda(), labels.cuda(), boxes.cuda() if clip else None)
    assert torch.equal(got.cpu(), want)
    masks = torch.rand(5, 33, 71) > 0.5
    assert torch.equal(ops.pack_masks(masks.cuda()).cpu(), ops.pack_masks(masks))
    assert torch.equal(ops.unpack_masks(ops.pack_masks(masks).cuda(), (33, 71)).cpu(), masks)


def test_build_info():
    info = ops.build_info()
    assert info["version"] and isinstance(info["cuda_compiled"], bool) and info["num_threads"] >= 1


# ------------------------------------------------------------------------------------------------
# The GPU-path defects, where the CPU can show them (the device check covers the rest on a GPU).


def test_single_image_errors_do_not_name_an_image():
    args = good_args()
    args[4] = torch.tensor([0, 9])
    with pytest.raises(RuntimeError, match=r"^labels\[1\] = 9 is outside"):
        ops.proposal_costs(*args)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0.0, 0.0, 2.0, 2.0], [float("nan"), 0.0, 1.0, 1.0]]), r"boxes\[1\] = \(nan, 0, 1, 1\) must be finite"),
    (torch.tensor([[3.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 1.0]]), r"boxes\[0\] = \(3, 0, 1, 2\) must be finite with x0 <= x1"),
    (torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, float("inf"), 1.0, 1.0]]), r"boxes\[1\] .* must be finite"),
])
def test_nan_and_inverted_boxes_are_rejected(bad, match):
    args = good_args()
    args[3] = bad
    with pytest.raises(RuntimeError, match=match):
        ops.proposal_costs(*args)
    with pytest.raises(RuntimeError, match=match.replace("boxes", r"boxes \(image 1\)", 1)):
        ops.proposal_costs_batched(*[list(column) for column in zip(good_args(), args)])
    units, members = args[0], args[1]
    with pytest.raises(RuntimeError, match=match):
        ops.paint_labels(units, members, torch.tensor([0, 1]), torch.tensor([1, 2]), bad)


def test_mixed_logit_dtypes_in_a_batch_are_each_read_in_their_own_dtype():
    half = random_image(1, 9, 70, 5, 2, 4, torch.float16)
    big = list(random_image(2, 11, 65, 6, 3, 4, torch.float32))
    big[2] = big[2] * 30000.0  # beyond float16's range: would become inf if cast to image 0's dtype
    batched = ops.proposal_costs_batched(*[list(column) for column in zip(half, big)])
    for args, got in zip((half, big), batched):
        want = ops.proposal_costs(*args)
        for field in want._fields:
            assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert_costs_close(batched[1], ref.proposal_costs(*big))


def test_images_without_boxes_never_read_their_logits():
    nan_image = list(good_args())
    nan_image[2] = torch.full_like(nan_image[2], float("nan"))
    nan_image[3], nan_image[4] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    out = ops.proposal_costs_batched(*[list(column) for column in zip(nan_image, good_args(), nan_image)])
    assert out[0].mean_ce.shape == (4, 0) and torch.isfinite(out[1].mean_ce[out[1].area > 0]).all()


def test_results_are_bit_identical_across_runs_and_thread_counts():
    images = [random_image(seed, 137, 150, 20, 4, 6, dtype) for seed, dtype in enumerate(DTYPES)]
    images.append(random_image(9, 23, 31, 12, 3, 5, per_pixel=True))
    columns = [list(column) for column in zip(*images)]
    threads = torch.get_num_threads()
    try:  # one image per call splits its rows over the threads; a batch gives each image a thread
        torch.set_num_threads(1)
        one = [ops.proposal_costs(*args) for args in images] + ops.proposal_costs_batched(*columns)
        torch.set_num_threads(2)
        two = [ops.proposal_costs(*args) for args in images] + ops.proposal_costs_batched(*columns)
        again = [ops.proposal_costs(*args) for args in images] + ops.proposal_costs_batched(*columns)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, again):
        for field in a._fields:
            assert torch.equal(getattr(a, field), getattr(b, field)) and torch.equal(getattr(b, field), getattr(c, field))


def test_outputs_own_their_storage():
    images = [random_image(seed, 10 + seed, 20, 5, 2, 3) for seed in range(3)]
    for costs in ops.proposal_costs_batched(*[list(column) for column in zip(*images)]):
        for field in costs._fields:
            t = getattr(costs, field)
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), field


def test_huge_logit_gaps_keep_mean_ce_exact():
    # Pixel NLLs far above the fixed-point bound: the image is recomputed with a bound that fits.
    for scale in (1e4, 1e30):
        args = list(random_image(4, 30, 40, 8, 3, 5))
        args[2] = args[2] * scale
        got, want = ops.proposal_costs(*args), ref.proposal_costs(*args)
        finite = torch.isfinite(want.mean_ce)
        torch.testing.assert_close(got.mean_ce[finite], want.mean_ce[finite], rtol=1e-5, atol=0)


def test_fake_kernels_check_devices_like_the_kernels():
    units, members, logits, boxes, labels = good_args()
    with pytest.raises(RuntimeError, match="must be on one device"):
        ops.proposal_costs(units.to("meta"), members, logits, boxes, labels)
    with pytest.raises(RuntimeError, match="must be on one device"):
        ops.proposal_costs_batched([units.to("meta")], [members], [logits], [boxes], [labels])
    meta = ops.proposal_costs(*[t.to("meta") for t in (units, members, logits, boxes, labels)])
    assert meta.mean_ce.shape == (members.shape[0], boxes.shape[0]) and meta.mean_ce.device.type == "meta"


def test_the_build_records_the_torch_it_was_built_against():
    import os

    info = ops.build_info()
    assert info["torch_built_against"] == torch.__version__
    # readable from the library file too, for the message when loading fails
    assert ops._built_against(os.path.dirname(ops.__file__)) == torch.__version__


@pytest.mark.parametrize("clip", [False, True])
def test_paint_labels_batched_equals_per_image(clip):
    images = []
    for seed, (h, w, n, m) in enumerate([(12, 70, 6, 4), (1, 1, 2, 1), (0, 5, 1, 0), (33, 20, 9, 0), (25, 64, 8, 5)]):
        units, members, _, boxes, _ = random_image(seed, max(h, 1), w, n, m, 3)
        units = units[:h]
        g = torch.Generator().manual_seed(seed)
        chosen = torch.randint(-1, n, (m,), generator=g)
        labels = torch.randint(1, 21, (m,), generator=g)
        images.append((units, members, chosen, labels, boxes))
    got = ops.paint_labels_batched(*[list(column) for column in zip(*images)], clip=clip, unassigned=255)
    for args, label in zip(images, got):
        assert torch.equal(label, ops.paint_labels(*args, clip=clip, unassigned=255))
        assert torch.equal(label, ref.paint_labels(*args, clip=clip, unassigned=255))
    assert ops.paint_labels_batched([], [], [], [], []) == []
    torch.library.opcheck(torch.ops.boxsup.paint_labels_batched.default,
                          tuple([list(column) for column in zip(*images)]) + (clip, 255))


def test_paint_labels_batched_errors_name_the_image():
    units, members, _, boxes, _ = good_args()
    good = (units, members, torch.tensor([0, -1]), torch.tensor([1, 2]), boxes)
    bad = (units, members, torch.tensor([0, 9]), torch.tensor([1, 2]), boxes)
    with pytest.raises(RuntimeError, match=r"chosen \(image 1\)\[1\] = 9 is outside \[-1, N\)"):
        ops.paint_labels_batched(*[list(column) for column in zip(good, bad)])
    wide = (units.clone().fill_(members.shape[1] * 64),) + good[1:]
    with pytest.raises(RuntimeError, match=r"units \(image 1\) has ids outside"):
        ops.paint_labels_batched(*[list(column) for column in zip(good, wide)])
    with pytest.raises(RuntimeError, match="one units, members, chosen, labels and boxes tensor per image"):
        ops.paint_labels_batched([units], [members], [], [], [])
