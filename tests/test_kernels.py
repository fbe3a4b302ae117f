"""oneDNN inference kernels (octswap.layers.kernels): packed conv weights.

Every packed result is compared with ``F.conv2d`` in double precision (the
reference), or with the same model run through plain PyTorch ops.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import octswap
from octswap.flops import count_cost
from octswap.inference import InferenceOptions, optimize_for_inference
from octswap.layers import kernels
from octswap.layers.kernels import PackedConv2d, fused_kernels, fused_kernels_available, pack_convs
from tests.nets import TinyResNet

CL = torch.channels_last
pytestmark = pytest.mark.skipif(not fused_kernels_available(), reason="this torch build has no oneDNN packed convs")


def _reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(x.double(), conv.weight.double(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.fixture
def packed_calls(monkeypatch):
    """Count calls of the packed-weight conv op."""
    calls = []
    real = kernels._conv_packed

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(kernels, "_conv_packed", counting)
    return calls


@pytest.mark.parametrize(
    "cin,cout,kernel,stride,dilation,groups,bias",
    [(16, 32, 3, 1, 1, 1, True), (16, 32, 1, 2, 1, 1, False), (32, 32, 3, 2, 1, 32, True),
     (16, 24, 3, 1, 2, 4, True), (8, 8, 5, 1, 1, 1, False)],
)  # fmt: skip
def test_packed_conv_matches_reference_at_any_shape(cin, cout, kernel, stride, dilation, groups, bias, packed_calls):
    plain = nn.Conv2d(cin, cout, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                      groups=groups, bias=bias).eval()  # fmt: skip
    packed = PackedConv2d.from_conv(plain)
    assert packed.weight is plain.weight and packed.bias is plain.bias
    gen = torch.Generator().manual_seed(cin + cout)
    # Packed once for the first shape, then used for other batch and map sizes.
    for shape in ((8, cin, 16, 16), (1, cin, 16, 16), (3, cin, 7, 9)):
        x = torch.randn(*shape, generator=gen).contiguous(memory_format=CL)
        with torch.inference_mode():
            got = packed(x)
        torch.testing.assert_close(got.double(), _reference(plain, x), rtol=1e-4, atol=1e-4)
    assert len(packed_calls) == 3


def test_packed_conv_repacks_when_weights_change(packed_calls):
    packed = PackedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1).eval())
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    with torch.inference_mode():
        packed(x)
    fresh = nn.Conv2d(8, 8, 3, padding=1)
    packed.load_state_dict(fresh.state_dict())  # copies in place: same storage, new version
    with torch.inference_mode():
        got = packed(x)
    torch.testing.assert_close(got.double(), _reference(fresh, x), rtol=1e-4, atol=1e-4)
    packed.to(torch.float64).to(torch.float32)  # new tensors
    with torch.no_grad():
        packed.weight.mul_(2)
        got = packed(x)
    torch.testing.assert_close(got.double(), _reference(packed, x), rtol=1e-4, atol=1e-4)


def test_packed_conv_falls_back_where_it_may_not_run(packed_calls):
    packed = PackedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1))
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL)
    y = packed(x.requires_grad_())  # autograd: nn.Conv2d.forward, gradients flow
    y.sum().backward()
    assert x.grad is not None and packed.weight.grad is not None
    with torch.no_grad():
        packed(x.detach().contiguous())  # NCHW
        with fused_kernels(False):
            packed(x.detach())
        packed.double()(x.detach().double().contiguous(memory_format=CL))  # float64
    assert packed_calls == []


def test_packed_conv_copies_pickles_and_keeps_state_dict_keys():
    plain = nn.Conv2d(8, 16, 3, padding=1).eval()
    packed = PackedConv2d.from_conv(plain)
    x = torch.randn(1, 8, 5, 5).contiguous(memory_format=CL)
    with torch.inference_mode():
        want = packed(x)  # the packed cache exists now
    assert list(packed.state_dict()) == list(plain.state_dict())
    twin = copy.deepcopy(packed)
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.inference_mode():
        torch.testing.assert_close(twin(x), want)
        torch.testing.assert_close(loaded(x), want)
    assert twin.weight.data_ptr() != packed.weight.data_ptr()


def test_prepared_model_packs_every_conv_and_keeps_keys_and_flops():
    model = TinyResNet().eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 15, 15))
    fast = optimize_for_inference(converted)
    convs = sum(isinstance(m, nn.Conv2d) for m in converted.modules())
    assert sum(isinstance(m, PackedConv2d) for m in fast.modules()) == convs  # octave path convs too
    unpacked = optimize_for_inference(converted, InferenceOptions(prepack=False))
    assert not any(isinstance(m, PackedConv2d) for m in unpacked.modules())
    assert list(fast.state_dict()) == list(unpacked.state_dict())
    # Outputs: test_inference.py compares this default (packed) preparation with plain ops.
    # FLOPs are counted on a trace of the plain ops, packed or not.
    sample = torch.randn(1, 3, 15, 15).contiguous(memory_format=CL)
    assert count_cost(fast, sample).flops == count_cost(unpacked, sample).flops


def test_pack_convs_replaces_only_packable_plain_conv2d():
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 8, 3), Custom(8, 8, 1), nn.Sequential(nn.Conv2d(8, 8, 1)),
                          nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 8, 3, padding="same"))  # fmt: skip
    assert pack_convs(model) == 2
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.Conv2d)] == [
        "PackedConv2d", "Custom", "PackedConv2d", "Conv2d", "Conv2d"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="only zero padding"):
        PackedConv2d.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"))
