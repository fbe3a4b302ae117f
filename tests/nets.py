"""Tiny models for tests, also importable as ``tests.nets:tiny_resnet`` by the CLI."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """stem (3->16) -> 16->32 block -> 32->32 stride-2 block -> pool -> fc."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = Block(16, 32, 1)
        self.layer2 = Block(32, 32, 2)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def tiny_resnet(num_classes: int = 10) -> TinyResNet:
    return TinyResNet(num_classes)


class Gated(TinyResNet):
    """TinyResNet whose forward branches on the data: ``torch.fx`` cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        if x.mean() > 1e6:  # data-dependent control flow
            x = x * 0
        return self.head(x.mean(dim=(2, 3)))


def gated(num_classes: int = 10) -> Gated:
    return Gated(num_classes)


def dies_on_build() -> nn.Module:
    """A factory whose process is killed while building (a crash or OOM kill, in tests)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def broken() -> nn.Module:
    """A model that fails at its first forward pass."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Linear(5, 5))


def slow_build(marker: str = "") -> nn.Module:
    """Announce the start through a file, then take a long time (for interrupt tests)."""
    import time
    from pathlib import Path

    if marker:
        Path(marker).write_text("started")
    time.sleep(60)
    return TinyResNet()


def bars(n: int, *, size: int = 16, seed: int = 0, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Oriented bars: class 0 horizontal, class 1 vertical, 2 diagonal; random position, noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=gen) * 0.3
    y = torch.randint(0, 3, (n,), generator=gen)
    for i in range(n):
        at = int(torch.randint(2, size - 2, (1,), generator=gen))
        label = int(y[i])
        if label == 0:
            x[i, :, at - 1 : at + 1, :] += 2.0
        elif label == 1:
            x[i, :, :, at - 1 : at + 1] += 2.0
        else:
            idx = torch.arange(size)
            x[i, :, idx, (idx + at) % size] += 2.0
    return x, y


def trained_tiny(x: torch.Tensor, y: torch.Tensor, *, steps: int = 60, seed: int = 0) -> TinyResNet:
    """A TinyResNet with 3 outputs trained for a few Adam steps on ``(x, y)``."""
    torch.manual_seed(seed)
    model = TinyResNet(num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(x), (32,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
