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

# Public names resolve lazily (PEP 562): `octswap --version` and `--help` then start
# without importing torch and torchvision, which take seconds.
_EXPORTS = {
    "load": "octswap.checkpoint",
    "save": "octswap.checkpoint",
    "read_checkpoint": ("octswap.checkpoint", "read"),
    "convert": "octswap.conversion",
    "recalibrate_batchnorm": "octswap.batchnorm",
    "Data": "octswap.data",
    "Preprocessing": "octswap.data",
    "open_data": "octswap.data",
    "HealInterrupted": "octswap.distillation",
    "HealOptions": "octswap.distillation",
    "heal": "octswap.distillation",
    "Fidelity": "octswap.fidelity",
    "measure_fidelity": "octswap.fidelity",
    "heal_checkpoint": "octswap.healing",
    "CheckpointError": "octswap.errors",
    "ConversionError": "octswap.errors",
    "InputError": "octswap.errors",
    "ModelLoadError": "octswap.errors",
    "OctswapError": "octswap.errors",
    "OutputExistsError": "octswap.errors",
    "PolicyError": "octswap.errors",
    "WeightsError": "octswap.errors",
    "InferenceOptions": "octswap.inference",
    "fold_batchnorm": "octswap.inference",
    "optimize_for_inference": "octswap.inference",
    "measure_latency": "octswap.latency",
    "ModelSource": "octswap.models",
    "load_model": "octswap.models",
    "OctaveBatchNorm2d": "octswap.layers",
    "OctaveConv2d": "octswap.layers",
    "OctaveConvBlock": "octswap.layers",
    "Plan": "octswap.plan",
    "make_plan": "octswap.conversion",
    "Policy": "octswap.policy",
    "Rule": "octswap.policy",
    "load_policy": "octswap.policy",
    "Report": "octswap.reporting",
    "report": ("octswap.reporting", "make_report"),
    "tune": "octswap.tuning",
    "TuneResult": "octswap.tuning",
    "TuneInterrupted": "octswap.tuning",
}


def __getattr__(name: str) -> object:
    import importlib

    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'octswap' has no attribute {name!r}")
    module_name, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CheckpointError",
    "ConversionError",
    "Data",
    "Fidelity",
    "HealInterrupted",
    "HealOptions",
    "InferenceOptions",
    "InputError",
    "ModelLoadError",
    "ModelSource",
    "OctaveBatchNorm2d",
    "OctaveConv2d",
    "OctaveConvBlock",
    "OctswapError",
    "TuneInterrupted",
    "TuneResult",
    "OutputExistsError",
    "Plan",
    "Preprocessing",
    "Policy",
    "PolicyError",
    "Report",
    "Rule",
    "WeightsError",
    "__version__",
    "convert",
    "fold_batchnorm",
    "heal",
    "heal_checkpoint",
    "load",
    "load_model",
    "load_policy",
    "make_plan",
    "measure_fidelity",
    "measure_latency",
    "open_data",
    "optimize_for_inference",
    "read_checkpoint",
    "recalibrate_batchnorm",
    "report",
    "save",
    "tune",
]
