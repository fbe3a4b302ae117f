"""Per-branch pooling keeps the low map at ceil(high/2) at every size (octswap.layers.pooling)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from octswap.layers.pooling import pool_low, pool_parameters

# (op, kernel, stride, padding, dilation, ceil_mode): the pools of the torchvision zoo
# (VGG/DenseNet 2x2, ResNet 3x3/2/1, AlexNet/Inception 3x3/2, SqueezeNet/GoogLeNet ceil,
# Inception's 3x3/1/1) and a few odd ones.
CONFIGS = [
    ("max_pool2d", 2, 2, 0, 1, False),
    ("max_pool2d", 3, 2, 1, 1, False),
    ("max_pool2d", 3, 2, 0, 1, False),
    ("max_pool2d", 3, 2, 0, 1, True),
    ("max_pool2d", 3, 1, 1, 1, True),
    ("max_pool2d", 3, 2, 1, 2, False),
    ("max_pool2d", 2, 1, 0, 1, False),
    ("avg_pool2d", 2, 2, 0, 1, False),
    ("avg_pool2d", 2, 2, 0, 1, True),
    ("avg_pool2d", 3, 2, 1, 1, False),
    ("avg_pool2d", 3, 2, 1, 1, True),
    ("avg_pool2d", 3, 1, 1, 1, False),
    ("avg_pool2d", 5, 3, 2, 1, True),
]


def _params(op, k, s, p, d, ceil, include_pad=True):
    params = {"kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
    if op == "max_pool2d":
        params["dilation"] = d
    else:
        params["count_include_pad"] = include_pad
    return params


def _native(x: Tensor, op: str, params: dict) -> Tensor:
    return getattr(F, op)(x, **params)


def ref_windows(x: Tensor, op: str, count: tuple[int, int], k, s, p, d=1, include_pad=True) -> Tensor:
    """Independent reference: window j covers rows j*s - p + d*i (i < k); a max over the
    pixels present, an average over the pixels present divided by the positions inside
    [-p, size + p) (count_include_pad) or by the pixels present. Loops, no pooling op."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, *count, dtype=x.dtype)
    for a, b in itertools.product(range(count[0]), range(count[1])):
        rows = [a * s - p + d * i for i in range(k)]
        cols = [b * s - p + d * i for i in range(k)]
        present = [(r, q) for r in rows for q in cols if 0 <= r < h and 0 <= q < w]
        values = torch.stack([x[:, :, r, q] for r, q in present], dim=-1)
        if op == "max_pool2d":
            out[:, :, a, b] = values.amax(dim=-1)
        else:
            inside = sum(1 for r in rows for q in cols if -p <= r < h + p and -p <= q < w + p)
            out[:, :, a, b] = values.sum(dim=-1) / (inside if include_pad else len(present))
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_low_branch_lands_on_half_the_high_branch_at_every_size(config):
    op, k, s, p, d, ceil = config
    params = _params(op, k, s, p, d, ceil)
    for h, w in itertools.product(range(1, 24), (5, 8)):
        try:
            high = _native(torch.randn(1, 2, h, w), op, params)
        except RuntimeError:  # too small for this pool in the original model as well
            continue
        low_in = torch.randn(1, 3, (h + 1) // 2, (w + 1) // 2)
        target = ((high.shape[2] + 1) // 2, (high.shape[3] + 1) // 2)
        low = pool_low(low_in, high, op, **params)
        assert tuple(low.shape) == (1, 3, *target), (h, w)
        try:
            native = _native(low_in, op, params)
        except RuntimeError:
            native = None
        if native is not None and tuple(native.shape[-2:]) == target:
            # Where the op keeps the invariant by itself, the result is the op's own.
            assert torch.equal(low, native), (h, w)
        else:
            ref = ref_windows(low_in, op, target, k, s, p, d, params.get("count_include_pad", True))
            torch.testing.assert_close(low, ref, msg=f"{(h, w)}")


@pytest.mark.parametrize("include_pad", [True, False])
def test_partial_average_windows_match_pytorch_ceil_mode(include_pad):
    """Where windows reach past the edge, averages divide as ceil_mode does: a low map of 5 under
    a 3x3/2/1 average lands on 3 windows; the native op in ceil mode gives the same 3."""
    low_in = torch.randn(2, 4, 5, 7)
    params = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": False, "count_include_pad": include_pad}
    high = torch.zeros(1, 1, 6, 8)  # needs 3 x 4 low windows: one more column than floor mode gives
    got = pool_low(low_in, high, "avg_pool2d", **params)
    assert got.shape[-2:] == (3, 4)
    ref = ref_windows(low_in, "avg_pool2d", (3, 4), 3, 2, 1, include_pad=include_pad)
    torch.testing.assert_close(got, ref)


def test_pool_parameters_from_modules_and_calls():
    assert pool_parameters(nn.MaxPool2d(3, 2, 1)) == ("max_pool2d", {
        "kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": False, "return_indices": False})  # fmt: skip
    name, params = pool_parameters("avg_pool2d", (2,), {"ceil_mode": True})
    assert name == "avg_pool2d" and params["stride"] == 2 and params["ceil_mode"] and params["count_include_pad"]
    assert pool_parameters("max_pool2d", (3, []))[1]["stride"] == 3  # torch.max_pool2d's default stride
    with pytest.raises(KeyError):
        pool_parameters(nn.AdaptiveAvgPool2d(1))
