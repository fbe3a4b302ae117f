"""octswap: turn the Conv2d layers of a trained CNN into Octave Convolutions.

Library first; the ``octswap`` command is a thin layer over these functions.

Example:
    >>> import octswap, torchvision
    >>> model = torchvision.models.resnet18()
    >>> converted, plan = octswap.convert(model, alpha=0.25)
    >>> report = octswap.report(model, converted, plan, model_name="resnet18")
    >>> report.total.flops_after < report.total.flops_before
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

from octswap.checkpoint import load, read as read_checkpoint, save  # noqa: E402
from octswap.conversion import convert  # noqa: E402
from octswap.errors import (  # noqa: E402
    CheckpointError,
    ConversionError,
    InputError,
    ModelLoadError,
    OctswapError,
    OutputExistsError,
    PolicyError,
    WeightsError,
)
from octswap.models import ModelSource, load_model  # noqa: E402
from octswap.octave import OctaveBatchNorm2d, OctaveConv2d, OctaveConvBlock  # noqa: E402
from octswap.plan import Plan, make_plan  # noqa: E402
from octswap.policy import Policy, Rule, load_policy  # noqa: E402
from octswap.report import Report, make_report as report  # noqa: E402

__all__ = [
    "CheckpointError",
    "ConversionError",
    "InputError",
    "ModelLoadError",
    "ModelSource",
    "OctaveBatchNorm2d",
    "OctaveConv2d",
    "OctaveConvBlock",
    "OctswapError",
    "OutputExistsError",
    "Plan",
    "Policy",
    "PolicyError",
    "Report",
    "Rule",
    "WeightsError",
    "__version__",
    "convert",
    "load",
    "load_model",
    "load_policy",
    "make_plan",
    "read_checkpoint",
    "report",
    "save",
]
