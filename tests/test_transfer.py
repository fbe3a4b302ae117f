"""Weight transfer into the low-resolution paths (octswap.layers.transfer, convert(transfer=...)).

The reference below computes, with plain convs on the original kernel, what each output branch
of an octave conv should hold when its input is constant over cells (the octave representation's
own model of a map): the high branch as the original computes it (at stride 1: the high-to-high
part exactly, the low-to-high part pooled to cells and read back by nearest upsampling), the low
branch as the original's output averaged over cells. It does not use the code under test.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import octswap
from octswap.cli import app
from octswap.layers.conv import OctaveConv2d
from octswap.layers.transfer import resample_paths, resampling_matrix
from tests.nets import TinyResNet


def _cells(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest upsampling by ``size``: a map constant over ``size x size`` cells."""
    return x.repeat_interleave(size, -2).repeat_interleave(size, -1)


def _reference(conv: nn.Conv2d, x_high: torch.Tensor, x_low: torch.Tensor, out_high: int):
    """What the octave branches should hold, from the original conv on the merged input."""
    in_high = x_high.shape[1]
    merged = torch.cat([x_high, _cells(x_low, 2)], dim=1)
    if conv.stride == (2, 2):
        y = conv(merged)  # the high branch sits at the original's output resolution
        return y[:, :out_high], F.avg_pool2d(y[:, out_high:], 2)
    w, b = conv.weight, conv.bias
    from_high = F.conv2d(x_high, w[:out_high, :in_high], b[:out_high], padding=conv.padding)
    from_low = F.conv2d(_cells(x_low, 2), w[:out_high, in_high:], None, padding=conv.padding)
    high = from_high + _cells(F.avg_pool2d(from_low, 2), 2)
    return high, F.avg_pool2d(conv(merged)[:, out_high:], 2)


def _inner(t: torch.Tensor, margin: int) -> torch.Tensor:
    """Away from the borders, where zero padding at two resolutions differs."""
    return t[..., margin:-margin, margin:-margin]


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (3, 2), (7, 2), (1, 1), (1, 2)])
def test_resampled_paths_compute_what_the_original_does_on_cell_constant_maps(kernel, stride):
    torch.manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(12, 10, kernel, stride=stride, padding=kernel // 2).double()
    octave = OctaveConv2d.from_conv(conv, alpha_in=0.5, alpha_out=0.4).double()
    sliced = OctaveConv2d.from_conv(conv, alpha_in=0.5, alpha_out=0.4).double()
    resample_paths(octave)
    # Constant over 2x2 cells at stride 1; at stride 2 over 4x4 cells (paths read maps pooled twice).
    cell = 2 * stride
    x_high = _cells(torch.randn(2, 6, 128 // cell, 128 // cell, dtype=torch.float64), cell)
    x_low = _cells(torch.randn(2, 6, 64 // stride, 64 // stride, dtype=torch.float64), stride)
    with torch.no_grad():
        want = _reference(conv, x_high, x_low, out_high=6)
        got, before = octave((x_high, x_low)), sliced((x_high, x_low))
    margin = kernel + 2
    for g, w in zip(got, want):
        torch.testing.assert_close(_inner(g, margin), _inner(w, margin))
    if kernel > 1:  # slices read twice the area: far off, so the check above can fail
        assert not torch.allclose(_inner(before[1], margin), _inner(want[1], margin), atol=1e-3)


def test_resampling_keeps_a_kernels_response_to_a_constant():
    for kernel, stride, in_factor, out_factor in [(3, 1, 2, 2), (5, 1, 2, 2), (3, 2, 2, 1), (7, 2, 4, 2)]:
        matrix = resampling_matrix(kernel, stride=stride, padding=kernel // 2, dilation=1,
                                   in_factor=in_factor, out_factor=out_factor)  # fmt: skip
        assert matrix is not None
        torch.testing.assert_close(matrix.sum(0), torch.ones(kernel, dtype=torch.float64))


def test_dilated_kernels_keep_their_slices():
    conv = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
    octave = OctaveConv2d.from_conv(conv, alpha_in=0.5, alpha_out=0.5)
    before = {n: p.clone() for n, p in octave.named_parameters()}
    assert resample_paths(octave) == 0
    assert all(torch.equal(p, before[n]) for n, p in octave.named_parameters())


def _smooth_batch() -> torch.Tensor:
    return F.interpolate(torch.randn(4, 3, 8, 8), size=32, mode="bilinear", align_corners=False)


def test_convert_resamples_by_default_and_slices_on_request():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    converted = {t: octswap.convert(model, alpha=0.5, input_shape=(3, 32, 32), transfer=t)[0]
                 for t in ("resampled", "sliced")}  # fmt: skip
    default, plan = octswap.convert(model, alpha=0.5, input_shape=(3, 32, 32))
    x = _smooth_batch()
    with torch.no_grad():
        assert torch.equal(default.eval()(x), converted["resampled"].eval()(x))
        assert not torch.allclose(default(x), converted["sliced"].eval()(x))
    for decision in plan.octave_layers:
        original = model.get_submodule(decision.name).weight
        sliced = converted["sliced"].get_submodule(decision.name)
        sliced = getattr(sliced, "conv", sliced)
        if sliced.l2l is not None:  # sliced: the original's block as it is
            assert torch.equal(sliced.l2l.weight, original[sliced.out_high :, sliced.in_high :])


def test_a_models_own_octave_convs_keep_their_weights():
    torch.manual_seed(0)
    own = OctaveConv2d(8, 8, 3, padding=1, alpha_in=0.0, alpha_out=0.5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), own).eval()
    converted, _ = octswap.convert(model, alpha=0.5, input_shape=(3, 16, 16), mode="layer")
    assert torch.equal(converted[1].h2l.weight, own.h2l.weight)


def test_unknown_transfer_is_an_input_error():
    with pytest.raises(octswap.InputError, match="transfer must be one of resampled, sliced"):
        octswap.convert(TinyResNet(), alpha=0.5, input_shape=(3, 16, 16), transfer="bilinear")


def test_cli_transfer_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    torch.save(TinyResNet().state_dict(), tmp_path / "w.pt")
    weights = {}
    for transfer in ("resampled", "sliced"):
        out = tmp_path / f"{transfer}.pt"
        result = runner.invoke(app, ["convert", "tests.nets:tiny_resnet", "-w", "w.pt", "-a", "0.5", "-s", "16",
                                     "--transfer", transfer, "-o", str(out), "-f", "json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["checkpoint"] == str(out)
        weights[transfer] = octswap.read_checkpoint(out).state_dict
    changed = [k for k in weights["sliced"] if not torch.equal(weights["sliced"][k], weights["resampled"][k])]
    assert changed and all(k.endswith(("h2l.weight", "l2h.weight", "l2l.weight", "h2h.weight")) for k in changed)
    bad = runner.invoke(app, ["convert", "tests.nets:tiny_resnet", "-a", "0.5", "-s", "16", "--transfer", "bilinear"])
    assert bad.exit_code == 2 and not list(tmp_path.glob("tiny_resnet*"))
