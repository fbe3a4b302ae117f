"""Shared fixtures: tiny hand-built nets whose shapes and costs are easy to compute by hand."""

from __future__ import annotations

import pytest
import torch

from tests.nets import TinyResNet


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    return TinyResNet().eval()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, so no test sees (or fills) the user's real one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    hub = tmp_path / "torch-home" / "hub"
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(previous)
