"""Dense models keep their accuracy: a segmentation model and a detector trained here on scenes
of real handwritten digits, converted, BatchNorm re-estimated and healed, all through the CLI.

For each training seed: train the model on the training scenes (fixed seed, plain loop
below), save its weights, then for each alpha run, as a user would,

    octswap convert MODEL -w WEIGHTS -s 128 -a ALPHA -o CKPT
    octswap heal CKPT --data TRAIN --val VAL --epochs 3 --no-labels -f json   (+ --annotations for boxes)

and read the healing record: the original's and each stage's figures on the validation
scenes: segmentation mIoU (torchmetrics) and pixel agreement; detection mAP@0.5 against the
annotations and F1 of the detections against the original's.

Models (random init, no download): segmentation_models_pytorch's ``Unet`` with a resnet18
encoder of depth 3 (decoder 64/32/16 channels; 11 classes: background + ten digits;
torchvision's ``lraspp_mobilenet_v3_large`` never got past predicting background here in 12
epochs, its stride-8 head too coarse for digit strokes), and torchvision's
``FasterRCNN`` on a ResNet-18 FPN at 128x128 (``detectors.py``; box sampling cut for CPU
training: 64 RPN anchors and 64 RoIs per image; 100 proposals at test time, as the scenes hold
2-4 digits, where torchvision's 1000 made the box head's FC layers 78% of the FLOPs).

Usage:
    .venv/bin/python benchmarks/bench_dense.py [--task segmentation|detection] [--seeds 0,1,2]
        [--alphas 0.25,0.5] [--epochs 24] [--heal-epochs 3] [--heal-batch-size B] [--heal-lr LR]
        [--heal-extra '--distill cwd'] [--transfer resampled|sliced]
        [--out /tmp/octswap-dense] [--prepare | --scratch]

``--scratch`` (segmentation): instead of healing, train octave models (each alpha) from scratch
with the original's recipe and report their mIoU beside the original's: the ceiling of what
healing a converted model can reach with this architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from digit_scenes import IGNORE, prepare

import octswap
from octswap.data import make_loader, open_data
from octswap.layers.transfer import TRANSFERS

MODELS = {
    "segmentation": ("segmentation_models_pytorch:Unet",
                     ["encoder_name=resnet18", "encoder_weights=None", "encoder_depth=3", "decoder_channels=[64,32,16]",
                      "classes=11"]),
    # torchvision's Faster R-CNN on a ResNet-18 FPN (benchmarks/detectors.py): the
    # fasterrcnn_mobilenet_v3_large_320_fpn tried first reads 8x8 and 4x4 maps at 128 pixels
    # and reached 19.6 mAP@0.5 (README).
    "detection": (str(Path(__file__).with_name("detectors.py")) + ":fasterrcnn_resnet18_fpn",
                  ["num_classes=11", "min_size=128", "max_size=128", "rpn_batch_size_per_image=64",
                   "box_batch_size_per_image=64", "rpn_pre_nms_top_n_test=300", "rpn_post_nms_top_n_test=100"]),
}  # fmt: skip


# Peak learning rates of the training recipe (AdamW, one-cycle). The first detector (mobilenet,
# strides 16-32) reached 19.6 mAP@0.5 at 2e-3; the ResNet-18 FPN one trains at 5e-4 with
# clipping to 97.8 in 20 epochs (loss 2.11 -> 0.06, 2026-12-03, README).
LEARNING_RATES = {"segmentation": 2e-3, "detection": 5e-4}
# Peak learning rates of `octswap heal` (resampled transfer, seed 0, alpha 0.5, 2026-12-03): the
# segmentation model 86.4 mIoU at 2e-3, 86.7 at 1e-3; the detector diverged at 2e-3 (mAP@0.5
# 73.3 converted -> 47.0 healed) and healed to 94.6 at 5e-4 (README).
HEAL_LEARNING_RATES = {"segmentation": 1e-3, "detection": 5e-4}
# Batch sizes of `octswap heal`: hundreds of updates in 3 epochs of 600 scenes. Batch 16 healed the
# sliced segmentation model to -8.5 mIoU points, batch 4 to -3.2; with the resampled transfer batch
# 2 took seed 0 from -1.9 to -1.3, and the detector from -3.2 to -2.3 (README, 2026-12-03).
HEAL_BATCH_SIZES = {"segmentation": 2, "detection": 2}
CLIP_NORM = 10.0  # gradient norm clipping, as torchvision's detection references allow


def build(task: str) -> torch.nn.Module:
    from octswap.cli.options import parse_model_args  # read as `octswap convert -m` reads them

    name, args = MODELS[task]
    return octswap.load_model(name, kwargs=parse_model_args(args))[0]


def train_model(task: str, train: Path, *, epochs: int, seed: int, batch_size: int = 16,
                octave_alpha: float | None = None) -> torch.nn.Module:  # fmt: skip
    """AdamW with a one-cycle schedule and gradient clipping (``LEARNING_RATES``, ``CLIP_NORM``);
    segmentation: cross-entropy on the masks (255 ignored); detection: the detector's own loss
    dict in train mode. ``octave_alpha``: the model is converted (octswap, default policy) before
    training, so an octave network is trained from scratch with the original's recipe."""
    torch.manual_seed(seed)
    model = build(task)
    if octave_alpha is not None:
        model, _ = octswap.convert(model, alpha=octave_alpha, input_shape=(3, 128, 128))
    if task == "detection":
        data = open_data(train / "images", input_shape=(3, 128, 128), annotations=train / "instances.json")
    else:
        data = open_data(train, input_shape=(3, 128, 128))
    loader_seed = torch.Generator().manual_seed(seed)
    lr = LEARNING_RATES[task]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        sampler = torch.utils.data.RandomSampler(data.dataset, generator=loader_seed)
        total, started = 0.0, time.perf_counter()
        for images, targets in make_loader(data, batch_size=batch_size, sampler=sampler, workers=2):
            if task == "detection":
                loss = sum(model(list(images), targets).values())
            else:
                loss = torch.nn.functional.cross_entropy(model(images), targets, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(images)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(data):.4f} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip
    return model.eval()


def octswap_cli(*args: object) -> dict:
    command = [sys.executable, "-m", "octswap.cli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    return json.loads(done.stdout)


def figures(task: str, fid: dict | None) -> dict:
    if fid is None:
        return {}
    if task == "segmentation":
        return {"miou_original": fid["miou_original"], "miou": fid["miou_converted"], "agreement": fid["agreement"]}
    return {"map50_original": fid["map50_original"], "map50": fid["map50_converted"], "agreement": fid["agreement"]}


def original_weights(task: str, train: Path, *, out: Path, seed: int, epochs: int) -> Path:
    """The trained original's weights file for ``seed``, trained (and saved) if not there yet."""
    weights = out / f"{task}-seed{seed}.pt"
    if not weights.exists():
        print(f"training {MODELS[task][0]}, seed {seed}", file=sys.stderr, flush=True)
        torch.save(train_model(task, train, epochs=epochs, seed=seed).state_dict(), weights)
    return weights


def run_seed(task: str, seed: int, alphas: list[float], *, train: Path, val: Path, out: Path, epochs: int,
             heal_epochs: int, heal_options: list[str], transfer: str = "resampled",
             recipe: str = "") -> list[dict]:  # fmt: skip
    name, args = MODELS[task]
    weights = original_weights(task, train, out=out, seed=seed, epochs=epochs)
    model_args = [a for arg in args for a in ("-m", arg)]
    data_args = ["--annotations", train / "instances.json"] if task == "detection" else []
    val_args = ["--val-annotations", val / "instances.json"] if task == "detection" else []
    train_data = train / "images" if task == "detection" else train
    val_data = val / "images" if task == "detection" else val
    rows = []
    for alpha in alphas:
        # One converted checkpoint per transfer, one healed model per recipe (variants kept side by side).
        ckpt = out / f"{task}-seed{seed}-a{alpha}-{transfer}.pt"
        healed = out / f"{task}-seed{seed}-a{alpha}-healed-{recipe}.pt"
        octswap_cli("convert", name, *model_args, "-w", weights, "-s", "128", "-a", alpha, "-o", ckpt, "--force",
                    "--transfer", transfer, "-f", "json", "--no-layers")  # fmt: skip
        started = time.perf_counter()
        record = octswap_cli("heal", ckpt, "--data", train_data, *data_args, "--val", val_data, *val_args,
                             "--epochs", heal_epochs, "--no-labels", *heal_options, "-o", healed, "--force",
                             "--allow-import",
                             "-f", "json")["healing"]  # fmt: skip
        fidelity = record["fidelity"]
        row = {"seed": seed, "alpha": alpha, "transfer": transfer, "heal_options": heal_options,
               "heal_seconds": time.perf_counter() - started,
               "converted": figures(task, fidelity["converted"]), "calibrated": figures(task, fidelity["calibrated"]),
               "epochs": [figures(task, e["fidelity"]) for e in record["history"]],
               "healed": figures(task, fidelity["healed"])}  # fmt: skip
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def scratch_miou(train: Path, val: Path, *, out: Path, seed: int, alphas: list[float], epochs: int) -> list[dict]:
    """Segmentation only: mIoU on the validation scenes of the trained original and of octave
    models (each alpha) trained from scratch with the same recipe and seed -- what the octave
    architecture itself reaches, the ceiling healing by distillation works under."""
    from torchmetrics.classification import MulticlassJaccardIndex

    data = open_data(val, input_shape=(3, 128, 128))

    def miou(model: torch.nn.Module) -> float:
        metric = MulticlassJaccardIndex(num_classes=11, ignore_index=IGNORE, average="macro")
        with torch.no_grad():
            for images, masks in make_loader(data, batch_size=32):
                metric.update(model(images).argmax(1), masks)
        return float(metric.compute())

    original = build("segmentation")
    weights = original_weights("segmentation", train, out=out, seed=seed, epochs=epochs)
    original.load_state_dict(torch.load(weights, weights_only=True))
    miou_original = miou(original.eval())
    rows = []
    for alpha in alphas:
        weights = out / f"segmentation-seed{seed}-scratch-a{alpha}.pt"
        print(f"training the octave model from scratch, alpha {alpha}, seed {seed}", file=sys.stderr, flush=True)
        model = train_model("segmentation", train, epochs=epochs, seed=seed, octave_alpha=alpha)
        torch.save(model.state_dict(), weights)
        row = {"seed": seed, "alpha": alpha, "miou_original": miou_original, "miou_scratch": miou(model)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(task: str, rows: list[dict]) -> str:
    key, ref, what = ("miou", "miou_original", "mIoU") if task == "segmentation" else ("map50", "map50_original",
                                                                                        "mAP@0.5")
    agree = "pixel agreement" if task == "segmentation" else "F1 vs original"
    epochs = max(len(r["epochs"]) for r in rows)
    head = ["α", "seed", f"original {what}", "converted", "BN re-estimated",
            *[f"epoch {i + 1}" for i in range(epochs)], f"healed − original", f"healed {agree}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 100:.1f}"

    for r in rows:
        original = r["healed"][ref]
        cells = [f"{r['alpha']:g}", str(r["seed"]), pct(original), pct(r["converted"][key]),
                 pct(r["calibrated"].get(key)), *[pct(e[key]) for e in r["epochs"]],
                 f"{(r['healed'][key] - original) * 100:+.1f}", pct(r["healed"]["agreement"])]
        lines.append("| " + " | ".join(cells) + " |")
    for alpha in sorted({r["alpha"] for r in rows}):
        gaps = [(r["healed"][key] - r["healed"][ref]) * 100 for r in rows if r["alpha"] == alpha]
        lines.append(f"\nα = {alpha:g}: healed − original {what}, median over {len(gaps)} seeds: "
                     f"{statistics.median(gaps):+.2f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(MODELS), default="segmentation")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--alphas", default="0.25,0.5")
    parser.add_argument("--epochs", type=int, default=24, help="training epochs of the original")
    parser.add_argument("--heal-epochs", type=int, default=3)
    parser.add_argument("--heal-batch-size", type=int, default=None,
                        help="octswap heal's batch size [default: HEAL_BATCH_SIZES of the task]")
    parser.add_argument("--heal-lr", type=float, default=None,
                        help="octswap heal's learning rate [default: HEAL_LEARNING_RATES of the task]")
    parser.add_argument("--transfer", choices=TRANSFERS, default=TRANSFERS[0],
                        help="octswap convert's --transfer")
    parser.add_argument("--heal-extra", default="", help="more heal options, as one string ('--distill cwd')")
    parser.add_argument("--train", type=int, default=600, help="training scenes")
    parser.add_argument("--val", type=int, default=200, help="validation scenes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/octswap-dense"))
    parser.add_argument("--scratch", action="store_true",
                        help="segmentation: instead of healing, train octave models from scratch (the ceiling)")
    parser.add_argument("--prepare", action="store_true",
                        help="only write the scenes and train the models (examples/segmentation.md)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = prepare(args.out / "scenes", train=args.train, val=args.val)
    print(f"octswap {octswap.__version__}, torch {torch.__version__}, {platform.machine()}, "
          f"{torch.get_num_threads()} threads; scenes: {train} / {val}", file=sys.stderr)  # fmt: skip
    seeds, alphas = [int(s) for s in args.seeds.split(",")], [float(a) for a in args.alphas.split(",")]
    if args.prepare:
        for seed in seeds:
            weights = original_weights(args.task, train, out=args.out, seed=seed, epochs=args.epochs)
            print(f"{MODELS[args.task][0]} trained on {train}: {weights}")
        return
    if args.scratch:
        if args.task != "segmentation":
            raise SystemExit("--scratch: segmentation only")
        scratch = []
        for seed in seeds:
            scratch += scratch_miou(train, val, out=args.out, seed=seed, alphas=alphas, epochs=args.epochs)
        (args.out / "results-scratch.json").write_text(json.dumps(scratch, indent=1))
        print("| α | seed | original mIoU | octave model trained from scratch |\n|---|---|---|---|")
        for r in scratch:
            print(f"| {r['alpha']:g} | {r['seed']} | {r['miou_original'] * 100:.1f} | {r['miou_scratch'] * 100:.1f} |")
        return
    if args.heal_lr is None:
        args.heal_lr = HEAL_LEARNING_RATES[args.task]
    if args.heal_batch_size is None:
        args.heal_batch_size = HEAL_BATCH_SIZES[args.task]
    extra = "".join(f"-{option.lstrip('-')}" for option in shlex.split(args.heal_extra))
    recipe = f"{args.transfer}-b{args.heal_batch_size}-lr{args.heal_lr:g}{extra}"
    rows = []
    for seed in seeds:
        rows += run_seed(args.task, seed, alphas, train=train, val=val, out=args.out, epochs=args.epochs,
                         heal_epochs=args.heal_epochs, transfer=args.transfer, recipe=recipe,
                         heal_options=["--batch-size", str(args.heal_batch_size), "--lr", str(args.heal_lr),
                                       *shlex.split(args.heal_extra)])  # fmt: skip
    (args.out / f"results-{args.task}-{recipe}.json").write_text(json.dumps(rows, indent=1))
    print(table(args.task, rows))


if __name__ == "__main__":
    main()
