"""Shared fixtures: tiny hand-built nets whose shapes and costs are easy to compute by hand."""

from __future__ import annotations

import os

import pytest
import torch

from tests.nets import TinyResNet


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist (`make test` runs two workers on two cores) each worker computes on one
    # thread, so that the workers do not fight over the cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


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
