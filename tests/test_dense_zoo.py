"""Segmentation and detection models as their users build them, converted in auto mode:
small versions in the default suite, the whole torchvision dense zoo and smp's architectures
with two encoders each under `slow`."""

from __future__ import annotations

import pytest
import torch
import torchvision

import octswap
from octswap.flops import count_cost
from octswap.plan import output_tensors

smp = pytest.importorskip("segmentation_models_pytorch")

SMP_SIZES = ((64, 64), (96, 64), (64, 128))  # smp models take multiples of 32
DETECTOR_SIZES = ((128, 128), (120, 80), (77, 101))


def _structure(value):
    """An output's structure with each tensor's trailing shape (detections vary in number)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape[1:]))
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_structure(v) for v in value]
    return type(value).__name__


def _in_graph_regions(plan: octswap.Plan) -> bool:
    return plan.mode == "graph" or (plan.mode == "regions" and not any(
        d.reason.startswith("layer mode") for d in plan.octave_layers))  # fmt: skip


def _check(model, shape, sizes, tmp_path, source):
    converted, plan = octswap.convert(model, alpha=0.5, input_shape=shape)
    assert plan.mode in ("graph", "regions") and _in_graph_regions(plan), plan.warnings
    assert len(plan.octave_layers) >= 10
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(1, 3, h, w)
            assert _structure(converted(x)) == _structure(model(x))
    path = octswap.save(tmp_path / "m.pt", converted, plan, source=source)
    loaded = octswap.load(path, model=source.build())
    x = torch.randn(1, 3, *sizes[-1])
    with torch.no_grad():
        for a, b in zip(output_tensors(loaded(x)), output_tensors(converted.eval()(x))):
            assert torch.equal(a, b)
    return converted, plan


SMP_FAST = [("Unet", "resnet18"), ("FPN", "mobilenet_v2")]
SMP_SLOW = [(arch, encoder) for arch in ("Unet", "FPN", "DeepLabV3Plus", "UnetPlusPlus", "PSPNet", "Linknet")
            for encoder in ("resnet34", "mobilenet_v2") if (arch, encoder) not in SMP_FAST]  # fmt: skip


@pytest.mark.parametrize(("arch", "encoder"),
                         [*SMP_FAST, *(pytest.param(*c, marks=pytest.mark.slow) for c in SMP_SLOW)])  # fmt: skip
def test_smp_models_convert_with_pairs_through_encoder_and_decoder(arch, encoder, tmp_path):
    kwargs = {"encoder_name": encoder, "encoder_weights": None, "classes": 3}
    source = octswap.ModelSource(kind="import", name=f"segmentation_models_pytorch:{arch}", kwargs=kwargs)
    model = source.build().eval()
    converted, plan = _check(model, (3, 64, 64), SMP_SIZES, tmp_path, source)
    x = torch.randn(1, 3, 128, 128)
    assert count_cost(converted, x).flops < 0.9 * count_cost(model, x).flops
    if arch not in ("PSPNet", "Linknet"):  # pooled 1x1..6x6 maps; transposed convs between 1x1 convs
        decoder = [d for d in plan.octave_layers if d.name.startswith("decoder.")]
        assert decoder, "the decoder converts too"


def _detectors(fast: set[str]) -> list:
    names = torchvision.models.list_models(module=torchvision.models.detection)
    return [pytest.param(n, id=n) if n in fast else pytest.param(n, id=n, marks=pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _detectors({"fasterrcnn_mobilenet_v3_large_320_fpn"}))
def test_torchvision_detectors_convert_backbone_neck_and_heads(name, tmp_path):
    kwargs = {} if name.startswith("ssd") else {"min_size": 128, "max_size": 160}  # SSDs resize to their own size
    source = octswap.ModelSource(kind="torchvision", name=name, kwargs=kwargs)
    model = source.build().eval()
    converted, plan = _check(model, (3, 128, 128), DETECTOR_SIZES, tmp_path, source)
    paths = [r["path"] for r in plan.regions]
    assert "backbone" in paths and any(p.startswith(("rpn", "head")) for p in paths), paths
    x = torch.randn(1, 3, 320, 320)  # SSD300's backbone needs about 300
    assert count_cost(converted.backbone, x).flops < 0.9 * count_cost(model.backbone, x).flops


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision.models.list_models(module=torchvision.models.segmentation))
def test_torchvision_segmentation_models_convert(name, tmp_path):
    source = octswap.ModelSource(kind="torchvision", name=name, kwargs={"aux_loss": False})
    model = source.build().eval()
    _check(model, (3, 96, 96), ((96, 96), (97, 131), (64, 64)), tmp_path, source)


def test_efficientnet_static_same_padding_convs_convert(tmp_path):
    """smp's efficientnet-b* encoders (the EfficientNet port) pad each conv with a fixed ZeroPad2d
    before a plain conv. Symmetric padding is an ordinary conv's: alpha 0 is exact at every size;
    the stride-2 convs' (0, 1, 0, 1) has no symmetric equivalent and stays plain, saying so."""
    from segmentation_models_pytorch.encoders._efficientnet import Conv2dStaticSamePadding

    from octswap.layers import OctaveConv2d

    conv = Conv2dStaticSamePadding(8, 16, 5, image_size=32, bias=True).eval()
    plain = OctaveConv2d.from_conv(conv)  # alpha 0: a plain conv with the equivalent padding
    for h, w in ((9, 7), (16, 16), (5, 12)):
        x = torch.randn(1, 8, h, w)
        with torch.no_grad():
            reference = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2)), conv.weight, conv.bias)
            torch.testing.assert_close(plain(x), reference)
            torch.testing.assert_close(conv(x), reference)
    source = octswap.ModelSource(kind="import", name="segmentation_models_pytorch:Unet",
                                 kwargs={"encoder_name": "efficientnet-b0", "encoder_weights": None, "classes": 3})
    model = source.build().eval()
    converted, plan = _check(model, (3, 64, 64), SMP_SIZES, tmp_path, source)
    static = {n for n, m in model.named_modules() if isinstance(m, Conv2dStaticSamePadding)}
    octave = {d.name for d in plan.octave_layers}
    assert len(static & octave) >= 10, "the encoder's convs convert"
    strided = [d for d in plan.kept_layers if d.name in static and d.site.stride == (2, 2)]
    assert strided and all("asymmetric padding" in d.reason for d in strided)
