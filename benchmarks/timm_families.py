"""Write configs/zoo-timm.yaml: one timm model per family (timm module) that has convolutions.

For each of timm's model modules, the candidate with the fewest parameters is chosen,
counted on the ``meta`` device (no memory, no weights), among its models that build
without arguments (timm's ``test_*`` models, stand-ins for its unit tests, excluded). A family is left out when its chosen model has fewer than
``--min-convs`` ``nn.Conv2d`` (default 3: more than a transformer's patch embedding).
The manifest then runs with ``octswap zoo configs/zoo-timm.yaml`` (issue 12), and
``table`` turns the run's results.json into the README's table: family, model, convs
converted of all, FLOPs ratio, mode used. ``make zoo-timm`` does both.

Usage:
    .venv/bin/python benchmarks/timm_families.py manifest [--out configs/zoo-timm.yaml] [--candidates 12] [--min-convs 3]
    .venv/bin/python benchmarks/timm_families.py table zoo-timm/results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn


def smallest(timm, family: str, candidates: int) -> tuple[str, int, int] | None:
    """(model, parameters, convs) of the smallest buildable model of ``family``."""
    # timm's test_* models are tiny stand-ins for its own unit tests, not models anyone deploys.
    names = [n for n in timm.list_models(module=family) if not n.startswith("test_")]
    names = sorted(names, key=lambda n: (len(n), n))[:candidates]
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


def write_manifest(timm, out: Path, candidates: int, min_convs: int) -> None:
    entries = []
    for family in timm.list_modules():
        found = smallest(timm, family, candidates)
        if found is None or found[2] < min_convs:
            why = "no buildable model" if found is None else f"{found[0]} has {found[2]} Conv2d"
            print(f"{family}: {why}; left out")
            continue
        print(f"{family}: timm:{found[0]} ({found[1] / 1e6:.1f} M parameters, {found[2]} convs)")
        entries.append(f"timm:{found[0]}")
    manifest = {"version": 1, "defaults": {"alphas": [0.5], "mode": "auto"}, "models": entries}
    header = (f"# One timm model per family with convolutions (timm {timm.__version__}), the smallest of each;\n"
              "# written by benchmarks/timm_families.py. Run: octswap zoo configs/zoo-timm.yaml --out zoo-timm\n")  # fmt: skip
    out.write_text(header + yaml.safe_dump(manifest, sort_keys=False))
    print(f"{len(entries)} families -> {out}")


def write_table(timm, results: Path) -> None:
    """Markdown table of a zoo run, one row per family, and the count that converts."""
    data = json.loads(results.read_text(encoding="utf-8"))
    family = {name: module for module in timm.list_modules() for name in timm.list_models(module=module)}
    rows = sorted(data["results"], key=lambda r: family.get(r["model"].removeprefix("timm:"), ""))
    print("| family | model | convs converted | FLOPs ratio | mode |")
    print("|---|---|---:|---:|---|")
    converting = failed = 0
    for r in rows:
        name = r["model"].removeprefix("timm:")
        if r["status"] != "ok":
            failed += 1
            print(f"| {family.get(name, '?')} | {name} | failed: {r.get('error')} | | {r['mode']} |")
            continue
        converting += r["convs_converted"] > 0
        total = r["convs_converted"] + r["convs_kept"]
        print(f"| {family.get(name, '?')} | {name} | {r['convs_converted']}/{total} | {r['flops_ratio']:.3f} | "
              f"{r.get('mode_used') or r['mode']} |")  # fmt: skip
    alphas = sorted({r["alpha"] for r in rows})
    print(f"\n{converting} of {len(rows)} families convert at least one conv, {failed} failed "
          f"(alpha {', '.join(map(str, alphas))}, timm {timm.__version__}, octswap {data['octswap_version']}, "
          f"{data.get('wall_time_s')} s wall).")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("manifest", help="write the one-model-per-family manifest")
    make.add_argument("--out", type=Path, default=Path("configs/zoo-timm.yaml"))
    make.add_argument("--candidates", type=int, default=12, help="models tried per family (shortest names first)")
    make.add_argument("--min-convs", type=int, default=3, help="fewer Conv2d than this: not a convolutional family")
    table = commands.add_parser("table", help="the README table of a zoo run of that manifest")
    table.add_argument("results", type=Path, help="results.json of `octswap zoo configs/zoo-timm.yaml`")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import timm

    if args.command == "manifest":
        write_manifest(timm, args.out, args.candidates, args.min_convs)
    else:
        write_table(timm, args.results)


if __name__ == "__main__":
    main()
