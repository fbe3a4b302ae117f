"""Real handwritten digits (scikit-learn's ``load_digits``, UCI, 1,797 8x8 images) and the
small CNNs the fidelity benchmark trains on them; also a command that prepares the
example in ``examples/digits.md`` (an ImageFolder of PNGs plus a trained model).

scikit-learn is a dev/bench dependency only (``pip install -e '.[dev]'``); octswap never
imports it. The factories are importable by octswap as ``benchmarks/digits.py:resnet18_digits``.

Usage:
    .venv/bin/python benchmarks/digits.py prepare OUT [--seed 0] [--epochs 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

SIZE = 32


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)``: the digits upscaled to 32x32 (bilinear), scaled
    to [0, 1], 30% held out (stratified, ``random_state=seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(digits.target)
    train, test = train_test_split(range(len(y)), test_size=0.3, random_state=seed, stratify=digits.target)
    return x[train], y[train], x[test], y[test]


def resnet18_digits(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 for 1-channel 32x32 inputs: 3x3 stem, stride 1, no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class SmallVGG(nn.Module):
    """Five 3x3 conv-BN-ReLU layers (32, 32, 64, 64, 128 channels, max-pools between), a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout, pool in ((32, False), (32, True), (64, False), (64, True), (128, False)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg_digits(num_classes: int = 10) -> nn.Module:
    return SmallVGG(num_classes)


FACTORIES = {"resnet18": resnet18_digits, "vgg": vgg_digits}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int, lr: float = 1e-3,
          batch_size: int = 64) -> nn.Module:  # fmt: skip
    """Plain supervised training: AdamW, one-cycle schedule, cross-entropy, fixed seed."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return sum(int((model(x[i : i + 256]).argmax(1) == y[i : i + 256]).sum()) for i in range(0, len(x), 256)) / len(x)


def prepare(out: Path, *, seed: int, epochs: int) -> None:
    """Write ``out/train`` and ``out/val`` as ImageFolders of PNGs and ``out/resnet18_digits.pt``."""
    from torchvision.utils import save_image

    x_train, y_train, x_test, y_test = digits_split(seed)
    for split, xs, ys in (("train", x_train, y_train), ("val", x_test, y_test)):
        for index, (image, label) in enumerate(zip(xs, ys)):
            folder = out / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            save_image(image, folder / f"{index:04d}.png")
    start = time.perf_counter()
    model = train(resnet18_digits(), x_train, y_train, epochs=epochs, seed=seed)
    torch.save(model.state_dict(), out / "resnet18_digits.pt")
    print(f"trained resnet18_digits in {time.perf_counter() - start:.0f} s: "
          f"{accuracy(model, x_test, y_test) * 100:.2f}% on the held-out digits")  # fmt: skip
    print(f"wrote {out}/train, {out}/val (ImageFolder, PNG) and {out}/resnet18_digits.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the example's data and trained model")
    prep.add_argument("out", type=Path)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    prepare(args.out, seed=args.seed, epochs=args.epochs)


if __name__ == "__main__":
    main()
