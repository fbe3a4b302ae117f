"""Tiny models for tests, also importable as ``tests.nets:tiny_resnet`` by the CLI."""

from __future__ import annotations

from typing import Any

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


def tiny_resnet_kwargs(num_classes: int = 10, **kwargs: Any) -> TinyResNet:
    """Like torchvision's builders: ``**kwargs`` reach a constructor (``TinyResNet(num_classes)``) that
    may not use them all; ``scale`` is taken here (a string fails only when the model runs)."""
    scale = kwargs.pop("scale", 1.0)
    model = TinyResNet(num_classes)
    model.stem.register_forward_pre_hook(lambda module, args: (args[0] * scale,))
    return model


class Gated(TinyResNet):
    """TinyResNet whose forward branches on the data: ``torch.fx`` cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(torch.relu(self.stem(x))))
        if x.mean() > 1e6:  # data-dependent control flow
            x = x * 0
        return self.head(x.mean(dim=(2, 3)))


def gated(num_classes: int = 10) -> Gated:
    return Gated(num_classes)


class GatedBlock(Block):
    """A Block whose forward branches on the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y * 0 if y.mean() > 1e6 else y


class Untraceable(Gated):
    """Gated, and every block gated too: no part holding a conv traces (layer mode only)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.layer1 = GatedBlock(16, 32, 1)
        self.layer2 = GatedBlock(32, 32, 2)


def untraceable(num_classes: int = 10) -> Untraceable:
    return Untraceable(num_classes)


class SizeCheckedSegmenter(nn.Module):
    """A small encoder-decoder whose top-level forward refuses sizes not divisible by 4
    (as smp's models check theirs): the check traces as a guard (graph mode, whole model).

    The encoder returns a list of features; the decoder upsamples the deeper one to the
    shallower one's size (``F.interpolate(size=...)``), adds a lateral 1x1 conv and
    predicts ``classes`` maps at the input's size.
    """

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder(classes)
        self.stride = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise RuntimeError(f"input size {h}x{w} is not divisible by {self.stride}")
        out = self.decoder(self.encoder(x))
        return nn.functional.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = Block(16, 32, 2)
        self.stage2 = Block(32, 32, 2)
        self.out_channels = (32, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(self.stem(x))
        return [f1, self.stage2(f1)]


class Decoder(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.lateral = nn.Conv2d(32, 32, 1)
        self.smooth = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.classify = nn.Conv2d(32, classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        shallow, deep = features
        up = nn.functional.interpolate(deep, size=shallow.shape[-2:], mode="nearest")
        return self.classify(self.smooth(up + self.lateral(shallow)))


def size_checked_segmenter(classes: int = 4) -> SizeCheckedSegmenter:
    return SizeCheckedSegmenter(classes)


class BranchingSegmenter(SizeCheckedSegmenter):
    """:class:`SizeCheckedSegmenter` whose forward also branches on the input's size where neither
    branch raises (not an input check): the whole model does not trace with torch.fx, its encoder
    and decoder do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if x.shape[-1] > x.shape[-2]:  # a landscape input: the same maps, computed another way
            out = out + 0
        return out


def branching_segmenter(classes: int = 4) -> BranchingSegmenter:
    return BranchingSegmenter(classes)


class SharedHead(nn.Module):
    """A detection-style head: the same two convs run on every level of a feature list."""

    def __init__(self, channels: int = 32, outputs: int = 6) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.predict = nn.Conv2d(channels, outputs, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.predict(self.conv(f)) for f in features]


class PyramidDetector(nn.Module):
    """Encoder features -> shared head, with Python over the batch at the top (untraceable)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.head = SharedHead()

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        levels = self.head(self.encoder(x))
        return [{f"level{i}": level[n] for i, level in enumerate(levels)} for n in range(len(x))]


def pyramid_detector() -> PyramidDetector:
    return PyramidDetector()


def picky(name: str = "tiny") -> nn.Module:
    """A factory that rejects an unknown ``name`` with a KeyError (as smp does for encoders)."""
    return {"tiny": TinyResNet}[name]()


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


class LoneConvs(nn.Module):
    """Two convs with no octave conv next to them: each reads a plain map and feeds an op that
    mixes channels (softmax, mean). The first is heavy (128->128 3x3: 0.34 GMAC at 48x48), the
    second light (128->32 1x1: 0.01 GMAC). The stem (3 input channels) stays plain under the default policy."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 128, 3, padding=1)
        self.heavy = nn.Conv2d(128, 128, 3, padding=1)
        self.light = nn.Conv2d(128, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(self.heavy(torch.relu(self.stem(x))), dim=1)
        return self.light(y).mean((2, 3))


def lone_convs() -> LoneConvs:
    return LoneConvs()


def _conv(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)


class UnitsNet(nn.Module):
    """Convs whose tuning units are known by construction (input 3x32x32).

    A residual stage: ``a2``, the projection ``proj`` and ``b2`` meet at adds (one unit);
    the inner convs ``a1``, ``b1`` each alone; ``left`` and ``right`` are concatenated (a
    concatenation keeps each split: two units); ``mix`` feeds a grouped conv; ``p`` and
    ``q`` both feed the shared conv ``shared`` (one unit); ``head`` reads the sum of the
    shared conv's two outputs.
    """

    UNITS = ({"a1"}, {"a2", "proj", "b2"}, {"b1"}, {"left"}, {"right"}, {"mix"}, {"grouped"}, {"p", "q"},
             {"shared"}, {"head"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv(3, 32)  # 3 input channels: kept plain (min_channels)
        self.a1, self.a2, self.proj = _conv(32, 32), _conv(32, 32), _conv(32, 32, 1)
        self.b1, self.b2 = _conv(32, 32), _conv(32, 32)
        self.left, self.right = _conv(32, 16, 1), _conv(32, 16)
        self.mix = _conv(32, 32, 1)
        self.grouped = _conv(32, 32, 3, groups=4)
        self.p, self.q = _conv(32, 32), _conv(32, 32)
        self.shared = _conv(32, 32)
        self.head = _conv(32, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.a2(torch.relu(self.a1(x))) + self.proj(x))
        y = torch.relu(self.b2(torch.relu(self.b1(y))) + y)
        z = torch.cat([self.left(y), self.right(y)], dim=1)
        z = torch.relu(self.grouped(torch.relu(self.mix(z))))
        s = self.shared(torch.relu(self.p(z))) + self.shared(torch.relu(self.q(z)))
        return self.head(torch.relu(s)).mean(dim=(2, 3))


def units_net() -> UnitsNet:
    return UnitsNet()
