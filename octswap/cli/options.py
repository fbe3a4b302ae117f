"""Options shared by several commands, and the parsing of their text values.

Each option is declared once here (name, short flag, help); a command lists the ones it
takes in its signature. Values that typer cannot check alone (``--batch 1,8``, ``--crop
HxW``, ``--model-arg k=v``) are parsed by the functions below, which raise
:class:`~octswap.errors.InputError` naming the flag.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml

from octswap.cli.output import Format
from octswap.errors import InputError

__all__ = ["Mode", "parse_batches", "parse_model_args", "preprocessing"]


class Runtime(str, Enum):
    """What latency is measured in: PyTorch, or ONNX Runtime sessions of exported files."""

    pytorch = "pytorch"
    onnxruntime = "onnxruntime"


class Transfer(str, Enum):
    resampled = "resampled"
    sliced = "sliced"


class Mode(str, Enum):
    auto = "auto"
    graph = "graph"
    regions = "regions"
    layer = "layer"


# Model and conversion.
AlphaOpt = Annotated[Optional[float], typer.Option(
    "--alpha", "-a", help="Global low-frequency ratio in [0, 1); overrides the policy's.")]
ChannelMultipleOpt = Annotated[Optional[int], typer.Option(
    "--channel-multiple", min=1, help="Round each split to multiples of N channels on both branches, nearest to "
    "alpha (16: ONNX Runtime's fast CPU convs); overrides the policy's.")]
PolicyOpt = Annotated[Optional[Path], typer.Option("--policy", "-p", help="YAML policy file (see configs/).")]
WeightsOpt = Annotated[Optional[str], typer.Option(
    "--weights", "-w", help="State-dict file, or a torchvision weights name already in the local cache.")]
InputSizeOpt = Annotated[Optional[str], typer.Option(
    "--input-size", "-s",
    help="Probe input: N, HxW or CxHxW [default: a timm model's own input size, else 224].")]
ModelArgOpt = Annotated[Optional[list[str]], typer.Option(
    "--model-arg", "-m", help="Builder argument KEY=VALUE (repeatable; VALUE in YAML, None or null for None), e.g. "
    "num_classes=10.")]
ModeOpt = Annotated[Mode, typer.Option(
    "--mode", help="graph: pairs flow between layers through the whole model (the paper's networks); regions: "
    "the same inside each largest part that traces (encoder, decoder, heads), layer mode outside them; layer: "
    "self-contained blocks; auto: the first of graph, regions, layer that works (one warning says why).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="A policy rule that matches no conv is an error.")]
TransferOpt = Annotated[Transfer, typer.Option(
    "--transfer", help="How the trained kernels fill the octave paths: resampled (each path at a coarser resolution "
    "gets the kernel that computes what the original does there) or sliced (the kernel's slices as they are, as in the "
    "paper's code).")]
AllowImportOpt = Annotated[bool, typer.Option("--allow-import", help="Let a checkpoint import its model factory.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]

# Output.
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
LayersOpt = Annotated[bool, typer.Option("--layers/--no-layers", help="Include one row per conv.")]

# Latency measurement (bench, report --latency): both models are prepared alike.
BatchOpt = Annotated[str, typer.Option("--batch", "-b", help="Batch sizes, comma-separated.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", "-t", min=1, help="Intra-op threads [default: torch's].")]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1, help="Alternating rounds per model.")]
LayoutOpt = Annotated[bool, typer.Option(
    "--channels-last/--nchw", help="Memory format of both models and their input.")]
FoldOpt = Annotated[bool, typer.Option("--fold-bn/--no-fold-bn", help="Fold BatchNorm into the convs of both models.")]
PrepackOpt = Annotated[bool, typer.Option(
    "--prepack/--no-prepack", help="Keep conv weights in oneDNN's layout, made once (both models).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile both models (minutes to start).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, or cuda where a GPU is present.")]

# Real data (report/convert --data, heal): see octswap.data.
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", "-d", help="ImageFolder-style folder, flat folder of images, a folder holding images/ and masks/, "
    "or .pt file {'inputs', 'labels'}: measure fidelity on it.")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", min=1, help="Samples per batch (per process under torchrun).")]
LimitOpt = Annotated[Optional[int], typer.Option(
    "--limit", min=1, help="Use this many samples (a fixed random subset).")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Normalisation mean, one value or one per channel [default: ImageNet's for 3 channels, else 0].")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Normalisation std, one value or one per channel [default: ImageNet's for 3 channels, else 1].")]
ResizeOpt = Annotated[Optional[int], typer.Option(
    "--resize", min=1,
    help="Resize the shorter image side to N, then centre-crop [default: resize to the model's HxW].")]
CropOpt = Annotated[Optional[str], typer.Option(
    "--crop", help="Centre-crop size N or HxW after --resize [default: the model's HxW].")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="DataLoader worker processes [default: 0 for .pt files, else up to 4].")]


class Task(str, Enum):
    """What the model computes, for fidelity figures (``--task``)."""

    classification = "classification"
    segmentation = "segmentation"
    detection = "detection"
    features = "features"


TaskOpt = Annotated[Optional[Task], typer.Option(
    "--task", help="What the model computes, for fidelity [default: guessed from its output].")]
AnnotationsOpt = Annotated[Optional[Path], typer.Option(
    "--annotations", help="COCO instances JSON for the images in --data (detection boxes, category ids as labels).")]
IgnoreIndexOpt = Annotated[int, typer.Option(
    "--ignore-index", help="Mask value left out of mIoU (segmentation masks).")]
ScoreThresholdOpt = Annotated[float, typer.Option(
    "--score-threshold", min=0.0, max=1.0, help="Detections from this score count when matched against the original's.")]
CalibrateOpt = Annotated[int, typer.Option(
    "--calibrate-bn", min=0, help="Re-estimate BatchNorm statistics on this many batches of --data (0: off).")]
TeacherWeightsOpt = Annotated[Optional[str], typer.Option(
    "--teacher-weights", help="The original's weights, when not where the checkpoint recorded them.")]


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["num_classes=10", "pretrained=false"]`` -> ``{"num_classes": 10, "pretrained": False}`` (YAML values;
    Python's ``None`` is taken for YAML's ``null``, as users write it)."""
    kwargs: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise InputError(f"--model-arg: expected KEY=VALUE, got {item!r}")
        if not value or value == "None":
            kwargs[key] = None
            continue
        try:
            kwargs[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = str(getattr(exc, "problem", None) or "not a YAML value")
            raise InputError(f"--model-arg {key}: {value!r} is not a valid YAML value ({reason})") from None
    return kwargs


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--batch: expected positive whole numbers separated by commas, got {text!r}")
    return tuple(int(p) for p in parts)


def preprocessing(mean: str | None, std: str | None, resize: int | None, crop: str | None) -> Any:
    """A :class:`~octswap.data.Preprocessing` when any option was given, else ``None``
    (the model's own transforms)."""
    from octswap.data import Preprocessing, parse_floats

    if mean is None and std is None and resize is None and crop is None:
        return None
    crop_size = None
    if crop is not None:
        parts = crop.lower().split("x")
        if not all(p.isdigit() and int(p) > 0 for p in parts) or len(parts) not in (1, 2):
            raise InputError(f"--crop: expected N or HxW with positive numbers, got {crop!r}")
        crop_size = (int(parts[0]), int(parts[-1]))
    mean_values, std_values = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    return Preprocessing(mean=mean_values, std=std_values, resize=resize, crop=crop_size)
