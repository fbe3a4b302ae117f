"""Model loading: torchvision names, import paths, weights files, the local weights cache."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision

from octswap.errors import ModelLoadError, WeightsError
from octswap.models import ModelSource, load_model, load_state_dict_file
from tests.nets import TinyResNet


def test_torchvision_by_name_with_builder_args():
    model, source = load_model("resnet18", kwargs={"num_classes": 7})
    assert model.fc.out_features == 7
    assert source == ModelSource(kind="torchvision", name="resnet18", kwargs={"num_classes": 7})
    rebuilt = ModelSource.from_dict(source.to_dict()).build()
    assert rebuilt.fc.out_features == 7


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelLoadError, match=r"unknown model 'resnet5' \(did you mean resnet50"):
        load_model("resnet5")


def test_a_keyword_the_factory_does_not_take_gets_the_close_names():
    with pytest.raises(ModelLoadError, match=r"unexpected keyword argument 'num_class' \(did you mean num_classes\?\)"):
        load_model("tests.nets:tiny_resnet", kwargs={"num_class": 3})


def test_bad_builder_argument():
    with pytest.raises(ModelLoadError, match="cannot build resnet18"):
        load_model("resnet18", kwargs={"no_such_arg": 1})


def test_import_path_and_file_path(tmp_path):
    model, source = load_model("tests.nets:tiny_resnet", kwargs={"num_classes": 3})
    assert isinstance(model, TinyResNet) and model.head.out_features == 3
    assert source.kind == "import"
    script = tmp_path / "mine.py"
    script.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1))\n")
    model, _ = load_model(f"{script}:build")
    assert isinstance(model[0], torch.nn.Conv2d)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_pkg.models:build", "cannot import 'no_such_pkg.models'"),
        ("tests.nets:nope", "has no attribute 'nope'$"),
        ("tests.nets:tiny_resnett", r"has no attribute 'tiny_resnett' \(did you mean tiny_resnet"),
        ("tests.nets:torch", "is not callable"),
        ("tests.nets:", "expected 'package.module:factory'"),
        ("/no/such/file.py:build", "model file not found"),
    ],
)
def test_import_errors(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


def test_factory_must_return_a_module(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("def build():\n    return 42\n")
    with pytest.raises(ModelLoadError, match="returned a int, not an nn.Module"):
        load_model(f"{script}:build")


def test_weights_file_round_trip_and_wrapped_formats(tmp_path):
    trained = TinyResNet()
    for wrap in (lambda s: s, lambda s: {"state_dict": s}, lambda s: {"module." + k: v for k, v in s.items()}):
        path = tmp_path / "w.pt"
        torch.save(wrap(trained.state_dict()), path)
        model, source = load_model("tests.nets:tiny_resnet", weights=str(path))
        assert source.weights == str(path)
        for key, value in trained.state_dict().items():
            assert torch.equal(model.state_dict()[key], value)


def test_weights_that_do_not_fit_are_listed(tmp_path):
    path = tmp_path / "w.pt"
    state = TinyResNet(num_classes=4).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["stem.bias"]
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model("tests.nets:tiny_resnet", weights=str(path))
    text = str(info.value)
    assert "missing: stem.bias" in text and "unexpected: extra.weight" in text
    assert "wrong shape: head.weight (4, 32) != (10, 32)" in text


def test_unreadable_and_missing_weights(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_state_dict_file(bad)
    with pytest.raises(WeightsError, match="weights file not found"):
        load_model("resnet18", weights=str(tmp_path / "missing.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "list.pt")


def test_uncached_torchvision_weights_never_download(hub_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("octswap tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match=r"ResNet18_Weights.IMAGENET1K_V1 is not in the local cache .* never downloads"):
        load_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(WeightsError, match=r"neither a file nor a weights name of resnet18 \(did you mean IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET1K_V9")


def test_cached_torchvision_weights_load(hub_dir, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("download attempted"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = hub_dir / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), cached)
    for spec in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        model, source = load_model("resnet18", weights=spec)
        assert source.weights == spec
        assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert Path(torch.hub.get_dir()) == hub_dir


def test_state_dict_versions_survive_weights_files(tmp_path):
    """MNASNet refuses a state dict without its version metadata: the loader keeps it."""
    reference = torchvision.models.mnasnet0_5()
    path = tmp_path / "mnas.pt"
    torch.save(reference.state_dict(), path)
    model, _ = load_model("mnasnet0_5", weights=str(path))
    assert torch.equal(model.layers[0].weight, reference.layers[0].weight)


def test_files_are_recorded_by_absolute_path(tmp_path, monkeypatch):
    """A checkpoint must find its model file and the original's weights from any folder."""
    (tmp_path / "net.py").write_text("from tests.nets import tiny_resnet\n")
    torch.save(TinyResNet().state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    _, source = load_model("net.py:tiny_resnet", weights="w.pt")
    assert source.name == f"{tmp_path / 'net.py'}:tiny_resnet" and source.weights == str(tmp_path / "w.pt")
    monkeypatch.chdir("/")
    assert isinstance(source.load(), TinyResNet)


def test_smp_models_by_import_path_are_built_without_pretrained_encoders(monkeypatch):
    # smp fetches ImageNet encoder weights from the Hugging Face hub unless told not to; any
    # download attempt here fails the test (the hub's downloader is replaced).
    smp = pytest.importorskip("segmentation_models_pytorch")
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    model, source = load_model("segmentation_models_pytorch:Unet", kwargs={"encoder_name": "resnet18"})
    assert isinstance(model, smp.Unet) and source.kwargs == {"encoder_name": "resnet18"}


def test_smp_encoder_weights_asked_for_but_not_cached_fail_at_once_without_the_network(tmp_path, monkeypatch):
    pytest.importorskip("segmentation_models_pytorch")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # offline while building: the hub refuses before any request (online, it would retry and
    # fail with a connection error on a machine without network, not this one)
    with pytest.raises(WeightsError, match="Hugging Face hub and octswap never downloads"):
        load_model("segmentation_models_pytorch:Unet", kwargs={"encoder_name": "resnet18", "encoder_weights": "imagenet"})
    assert constants.HF_HUB_OFFLINE is False  # put back


def test_a_value_a_torchvision_builder_rejects_is_a_model_error():
    with pytest.raises(ModelLoadError, match="cannot build fasterrcnn_mobilenet_v3_large_320_fpn"):
        load_model("fasterrcnn_mobilenet_v3_large_320_fpn", kwargs={"weights_backbone": "bogus"})
    with pytest.raises(ModelLoadError, match="give resnet18's weights with --weights"):
        load_model("resnet18", kwargs={"weights": "IMAGENET1K_V1"})
