"""What a command's MODEL argument names, resolved in one place.

A model name or import path is loaded, probed at its input size and converted by the
policy the options describe; a checkpoint already holds its conversion, so options that
would choose another are refused (one line naming them). Every command that takes
"a model or a checkpoint" (report, bench, export) goes through :func:`resolve`; those
that take only a model (convert, plan) through :func:`load` and :func:`convert`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octswap.cli.options import Mode, Transfer, parse_model_args
from octswap.errors import InputError
from octswap.shapes import parse_input_shape

if TYPE_CHECKING:
    from torch import nn

    from octswap.checkpoint import Checkpoint
    from octswap.models import ModelSource
    from octswap.plan import Plan
    from octswap.policy import Policy

__all__ = ["ModelChoice", "Target", "choice", "convert", "default_output", "is_checkpoint", "load",
           "refuse_with_checkpoint", "resolve"]


@dataclass(frozen=True)
class ModelChoice:
    """The options that choose a model and its conversion; ``None`` = not given."""

    alpha: float | None = None
    channel_multiple: int | None = None
    policy: Path | None = None
    weights: str | None = None
    model_arg: list[str] | None = None
    input_size: str | None = None
    mode: Mode | None = None
    strict: bool | None = None
    transfer: Transfer | None = None

    def given(self, *, except_: tuple[str, ...] = ()) -> list[str]:
        """The flags given, in declaration order (``--alpha``, ``--mode``...)."""
        return [f"--{f.name.replace('_', '-')}" for f in fields(self)
                if f.name not in except_ and getattr(self, f.name) not in (None, [])]

    @cached_property
    def resolved_policy(self) -> Policy:
        """The policy file (or the default policy) with ``--alpha``/``--channel-multiple`` applied."""
        from octswap.policy import Policy, load_policy

        policy = load_policy(self.policy) if self.policy is not None else Policy()
        policy = policy.with_alpha(self.alpha) if self.alpha is not None else policy
        return policy.with_channel_multiple(self.channel_multiple) if self.channel_multiple is not None else policy

    @property
    def mode_value(self) -> str:
        return (self.mode or Mode.auto).value


def choice(*, mode: Mode = Mode.auto, strict: bool = False, transfer: Transfer = Transfer.resampled,
           **options: Any) -> ModelChoice:
    """A :class:`ModelChoice` from a command's parameters (defaults count as not given)."""
    return ModelChoice(mode=None if mode is Mode.auto else mode, strict=strict or None,
                       transfer=None if transfer is Transfer.resampled else transfer, **options)


def is_checkpoint(target: str) -> bool:
    return Path(target).is_file() or (":" not in target and Path(target).suffix in (".pt", ".pth"))


def default_output(model: str, alpha: float) -> Path:
    """``resnet50`` at 0.25 -> ``resnet50-oct0.25.pt``; an import path keeps its factory's name."""
    return Path(f"{model_stem(model)}-oct{alpha:g}.pt")


def model_stem(model: str) -> str:
    """A file-name stem for a model: ``resnet50``; an import path's factory name."""
    from octswap.models import file_stem

    return file_stem(model.rpartition(":")[2] or model).removesuffix(".py")


def refuse_with_checkpoint(options: ModelChoice, *, keep: tuple[str, ...] = ()) -> None:
    """A checkpoint holds its own conversion: options that choose another are an error
    (one line naming the ones given), except those in ``keep``."""
    named = options.given(except_=keep)
    if named:
        verb = "applies" if len(named) == 1 else "apply"
        raise InputError(f"{', '.join(named)} {verb} to a model, not to a checkpoint (it holds its own conversion)")


@dataclass
class Loaded:
    """A model loaded by name, and the input shape it is probed at."""

    model: nn.Module
    source: ModelSource
    shape: tuple[int, int, int]


def load(name: str, options: ModelChoice) -> Loaded:
    """Load ``name`` with the options' weights and builder arguments; the shape is
    ``--input-size``, else the model's own (timm's ``pretrained_cfg``, else 224)."""
    import octswap
    from octswap.models import default_input_shape

    kwargs = parse_model_args(options.model_arg)
    model, source = octswap.load_model(name, weights=options.weights, kwargs=kwargs)
    shape = parse_input_shape(options.input_size) if options.input_size else default_input_shape(model)
    if kwargs:  # a bad builder value often fails only when the model runs: name the values, not the shape
        from octswap.plan import run_once

        try:
            run_once(model, shape)
        except InputError as err:
            raise InputError(f"{err} ({_blame(model, shape, options)})") from None
    return Loaded(model, source, shape)


def _blame(model: nn.Module, shape: tuple[int, int, int], options: ModelChoice) -> str:
    """What a model built with ``--model-arg`` and failing at ``shape`` should have checked: the
    size where the model runs at its own default size, else the builder arguments."""
    from octswap.models import default_input_shape
    from octswap.plan import run_once

    default = default_input_shape(model)
    if options.input_size and default != shape:
        try:
            run_once(model, default)
        except InputError:
            pass
        else:
            size = "x".join(map(str, default[1:]))
            return f"at --input-size {options.input_size}; the model runs at its default size, {size}"
    return f"built with --model-arg {', '.join(options.model_arg or ())}: check those values"


def convert(loaded: Loaded, options: ModelChoice) -> tuple[nn.Module, Plan]:
    import octswap

    policy = options.resolved_policy
    transfer = (options.transfer or Transfer.resampled).value
    return octswap.convert(loaded.model, policy, input_shape=loaded.shape, mode=options.mode_value,
                           strict=bool(options.strict), transfer=transfer)


@dataclass
class Target:
    """A converted model and where it came from: a model converted now, or a checkpoint."""

    converted: nn.Module
    plan: Plan
    name: str  # for titles: the model, or "model (checkpoint path)"
    model_name: str
    weights: str | None
    source: ModelSource
    checkpoint: Checkpoint | None = None
    loaded: Loaded | None = None

    @cached_property
    def original(self) -> nn.Module:
        """The original: as loaded, or rebuilt from the checkpoint's record (random weights)
        and folded like the checkpoint was, for fair counts and timings."""
        import octswap

        if self.loaded is not None:
            return self.loaded.model
        assert self.checkpoint is not None
        original = self.checkpoint.build_original()
        if self.checkpoint.inference is not None and self.checkpoint.inference.fold_bn:
            original = octswap.fold_batchnorm(original.eval())
        return original


def resolve(target: str, options: ModelChoice, *, allow_import: bool, keep: tuple[str, ...] = ()) -> Target:
    """Load a checkpoint, or load and convert a model.

    Args:
        target: A checkpoint file, or a model name / import path.
        options: How to load and convert a model; with a checkpoint, any option given
            other than those in ``keep`` is an :class:`InputError`.
        allow_import: Let a checkpoint import its model factory.
    """
    import octswap

    if is_checkpoint(target):
        refuse_with_checkpoint(options, keep=keep)
        ckpt = octswap.read_checkpoint(target)
        converted = octswap.load(target, allow_import=allow_import, compile=False)
        return Target(converted, ckpt.plan, f"{ckpt.source.name} ({target})", ckpt.source.name, ckpt.source.weights,
                      ckpt.source, checkpoint=ckpt)
    loaded = load(target, options)
    converted, plan = convert(loaded, options)
    return Target(converted, plan, target, target, loaded.source.weights, loaded.source, loaded=loaded)
