"""Write configs/zoo-timm.yaml: one timm model per family (timm module) that has convolutions.

For each of timm's model modules, the candidate with the fewest parameters is chosen,
counted on the ``meta`` device (no memory, no weights), among its models that build
without arguments. A family is left out when its chosen model has fewer than
``--min-convs`` ``nn.Conv2d`` (default 3: more than a transformer's patch embedding).
The manifest then runs with ``octswap zoo configs/zoo-timm.yaml`` (issue 12).

Usage: .venv/bin/python benchmarks/timm_families.py [--out configs/zoo-timm.yaml] [--candidates 12] [--min-convs 3]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn


def smallest(timm, family: str, candidates: int) -> tuple[str, int, int] | None:
    """(model, parameters, convs) of the smallest buildable model of ``family``."""
    names = sorted(timm.list_models(module=family), key=lambda n: (len(n), n))[:candidates]
    best = None
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        except Exception:  # noqa: BLE001 - a model that does not build is skipped
            continue
        params = sum(p.numel() for p in model.parameters())
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        if best is None or params < best[1]:
            best = (name, params, convs)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("configs/zoo-timm.yaml"))
    parser.add_argument("--candidates", type=int, default=12, help="models tried per family (shortest names first)")
    parser.add_argument("--min-convs", type=int, default=3, help="fewer Conv2d than this: not a convolutional family")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import timm

    entries = []
    for family in timm.list_modules():
        found = smallest(timm, family, args.candidates)
        if found is None or found[2] < args.min_convs:
            why = "no buildable model" if found is None else f"{found[0]} has {found[2]} Conv2d"
            print(f"{family}: {why}; left out")
            continue
        print(f"{family}: timm:{found[0]} ({found[1] / 1e6:.1f} M parameters, {found[2]} convs)")
        entries.append(f"timm:{found[0]}")
    manifest = {"version": 1, "defaults": {"alphas": [0.5], "mode": "graph"}, "models": entries}
    header = (f"# One timm model per family with convolutions (timm {timm.__version__}), the smallest of each;\n"
              "# written by benchmarks/timm_families.py. Run: octswap zoo configs/zoo-timm.yaml --out zoo-timm\n")  # fmt: skip
    args.out.write_text(header + yaml.safe_dump(manifest, sort_keys=False))
    print(f"{len(entries)} families -> {args.out}")


if __name__ == "__main__":
    main()
