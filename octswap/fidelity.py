"""Fidelity: what a converted model computes compared with its original, on real data.

Both models run in eval mode without gradients over the same batches. For a
classifier (output ``Tensor[N, K]``) :func:`measure_fidelity` reports

* **agreement**: the share of samples whose top-1 class is the same in both models;
* **accuracy** of both (top-1, and top-5 where ``K >= 5``) when labels are known;
* **KL**: the mean over samples of ``KL(softmax(original) || softmax(converted))`` in nats;
* **relative error** of the outputs: ``sqrt(sum ||c - o||^2 / sum ||o||^2)`` over all samples;
* **per-stage drift**: the same relative error at the output of each top-level stage
  (``layer1`` ... of a ResNet, ``features.3`` ... of a VGG), so a user sees where the
  outputs start to differ and which stage a policy rule should spare. In graph mode a
  stage may end on a (high, low) pair; it is merged (low branch upsampled, original
  channel order) before comparing.

Random inputs prove nothing for a trained model: measure on samples of the data it
was trained for (:mod:`octswap.data`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from octswap.data import UNLABELLED, batches as iterate
from octswap.errors import InputError
from octswap.eval_mode import eval_mode
from octswap.stages import stage_names

__all__ = ["Fidelity", "StageDrift", "measure_fidelity"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageDrift:
    """Relative L2 error of one stage's output, converted vs original."""

    name: str
    relative_error: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "relative_error": round(self.relative_error, 6)}


@dataclass(frozen=True)
class Fidelity:
    """Converted vs original on one data set (see the module docstring for each figure).

    Accuracies are ``None`` without labels; top-5 figures are ``None`` below 5 classes.
    """

    samples: int
    agreement: float
    kl: float
    relative_error: float
    accuracy_original: float | None = None
    accuracy_converted: float | None = None
    top5_original: float | None = None
    top5_converted: float | None = None
    stages: tuple[StageDrift, ...] = field(default=())
    data: str = ""

    def to_dict(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "data": self.data,
            "samples": self.samples,
            "agreement": r(self.agreement),
            "accuracy_original": r(self.accuracy_original),
            "accuracy_converted": r(self.accuracy_converted),
            "top5_original": r(self.top5_original),
            "top5_converted": r(self.top5_converted),
            "kl": r(self.kl),
            "relative_error": r(self.relative_error),
            "stages": [s.to_dict() for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        values = {k: v for k, v in data.items() if k != "stages"}
        return cls(**values, stages=tuple(StageDrift(**s) for s in data.get("stages", ())))

    def rows(self) -> list[tuple[str, str]]:
        """``(metric, value)`` rows for tables: headline figures, then one per stage."""

        def pct(value: float | None) -> str:
            return "n/a (no labels)" if value is None else f"{value * 100:.2f}%"

        rows = [("samples", str(self.samples)), ("top-1 agreement", pct(self.agreement))]
        if self.accuracy_original is not None:
            rows += [("top-1 accuracy original", pct(self.accuracy_original)),
                     ("top-1 accuracy converted", pct(self.accuracy_converted))]  # fmt: skip
        if self.top5_original is not None:
            rows += [("top-5 accuracy original", pct(self.top5_original)),
                     ("top-5 accuracy converted", pct(self.top5_converted))]  # fmt: skip
        rows += [("KL original->converted (nats)", f"{self.kl:.4f}"),
                 ("output relative error", f"{self.relative_error:.4f}")]  # fmt: skip
        rows += [(f"drift {s.name}", f"{s.relative_error:.4f}") for s in self.stages]
        return rows

    def summary(self) -> str:
        """One line: agreement and accuracies."""
        text = f"agreement {self.agreement * 100:.2f}% on {self.samples} samples"
        if self.accuracy_original is not None and self.accuracy_converted is not None:
            text += f"; accuracy {self.accuracy_original * 100:.2f}% -> {self.accuracy_converted * 100:.2f}%"
        return text


# ------------------------------------------------------------------ stage taps
class _Accumulator:
    """Running sums for a relative L2 error over many batches."""

    def __init__(self) -> None:
        self.diff = 0.0
        self.ref = 0.0

    def add(self, converted: torch.Tensor, original: torch.Tensor) -> None:
        if converted.shape != original.shape:
            raise ValueError(f"shapes differ: {tuple(converted.shape)} vs {tuple(original.shape)}")
        converted, original = converted.double(), original.double()
        self.diff += float((converted - original).pow(2).sum())
        self.ref += float(original.pow(2).sum())

    @property
    def value(self) -> float:
        if self.ref == 0.0:
            return 0.0 if self.diff == 0.0 else math.inf
        return math.sqrt(self.diff / self.ref)


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    key, value = list(stack.items())[-1]
    return str(value[0]) if isinstance(value, tuple) else str(key)


def _stage_outputs(gm: fx.GraphModule, stages: Sequence[str]) -> dict[str, str]:
    """Stage name -> the last node of the traced original that runs inside that stage."""
    last: dict[str, str] = {}
    for node in gm.graph.nodes:
        path = _module_path(node)
        for stage in stages:
            if path == stage or path.startswith(stage + "."):
                last[stage] = node.name
    return last


class _Capture(fx.Interpreter):
    """Run a GraphModule, keeping the values of the named nodes."""

    def __init__(self, gm: fx.GraphModule, wanted: Callable[[fx.Node], bool]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if self.wanted(n):
            self.values[n] = result
        return result


class _GraphTaps:
    """Stage outputs of a graph-mode conversion, found through the rewrite's origin tags."""

    def __init__(self, original: nn.Module, converted: fx.GraphModule, stages: Sequence[str]) -> None:
        from octswap.rewrite.graph import ORIGIN, trace

        self.traced = trace(original)
        by_stage = _stage_outputs(self.traced, stages)
        self.names = {node: stage for stage, node in by_stage.items()}
        self.converted = converted
        self.roles: dict[str, dict[str, tuple[fx.Node, Any]]] = {}
        for node in converted.graph.nodes:
            for origin, role, restore in node.meta.get(ORIGIN, ()):
                if origin in self.names:
                    self.roles.setdefault(origin, {})[role] = (node, restore)
        self.stages = [s for s in stages if by_stage.get(s) in self.roles]
        self.wanted = {node for roles in self.roles.values() for node, _ in roles.values()}

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, dict[str, tuple[Any, Any]]]:
        from octswap.rewrite.graph import merge_ordered

        original = _Capture(self.traced, lambda n: n.name in self.names)
        reference = original.run(x)
        converted = _Capture(self.converted, lambda n: n in self.wanted)
        output = converted.run(x)
        pairs: dict[str, tuple[Any, Any]] = {}
        by_name = {n.name: v for n, v in original.values.items()}
        for origin, roles in self.roles.items():
            stage = self.names[origin]
            if "plain" in roles:
                value = converted.values.get(roles["plain"][0])
            elif "high" in roles and "low" in roles:
                high_node, restore = roles["high"]
                high, low = converted.values.get(high_node), converted.values.get(roles["low"][0])
                value = None if high is None or low is None else merge_ordered(high, low, restore)
            else:
                value = None
            pairs[stage] = (value, by_name.get(origin))
        return output, reference, pairs


@contextmanager
def _hooked(original: nn.Module, converted: nn.Module, stages: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """Forward hooks on the named stages of both models (same names; layer mode, eager)."""
    seen: dict[str, list[Any]] = {}
    with ExitStack() as stack:
        for stage in stages:
            try:
                modules = (original.get_submodule(stage), converted.get_submodule(stage))
            except AttributeError:
                continue
            for side, module in enumerate(modules):

                def hook(_m: nn.Module, _i: Any, output: Any, stage: str = stage, side: int = side) -> None:
                    seen.setdefault(stage, [None, None])[side] = output

                stack.callback(module.register_forward_hook(hook).remove)
        yield seen


# ------------------------------------------------------------------ measuring
def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _logits(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.ndim == 2:
        return value
    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
    raise InputError(f"fidelity needs a classifier whose output is Tensor[N, classes]; the {what} model returns {shape}")


def _graph_taps(original: nn.Module, converted: nn.Module, stages: Sequence[str]) -> _GraphTaps | None:
    """Stage taps for a graph-mode conversion that carries the rewrite's origin tags; else ``None`` (hooks)."""
    if not stages or not isinstance(converted, fx.GraphModule):
        return None
    from octswap.rewrite.graph import ORIGIN

    if any(ORIGIN in n.meta for n in converted.graph.nodes):
        return _GraphTaps(original, converted, stages)
    return None


def _forward(
    original: nn.Module,
    converted: nn.Module,
    inputs: torch.Tensor,
    taps: _GraphTaps | None,
    hooked: dict[str, list[Any]] | None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[Any, Any]]]:
    """One batch through both models.

    Returns:
        The original's and the converted model's logits (float32, ``[N, classes]``), and per
        stage its ``(converted, original)`` outputs, from ``taps`` or the ``hooked`` stages.

    Raises:
        InputError: a model is not a classifier, or the two outputs differ in shape.
    """
    if taps is not None:
        out_c, out_o, pairs = taps.run(inputs)
    else:
        out_o, out_c = original(inputs), converted(inputs)
        pairs = {s: (v[1], v[0]) for s, v in (hooked or {}).items()}
    o, c = _logits(out_o, "original").float(), _logits(out_c, "converted").float()
    if c.shape != o.shape:
        raise InputError(f"the models' outputs differ in shape: {tuple(o.shape)} vs {tuple(c.shape)}")
    return o, c, pairs


@dataclass
class _Tally:
    """Running sums of :func:`measure_fidelity` over the batches (counts of samples)."""

    stages: list[str]
    count: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    classes: int = 0
    labelled: bool = True  # every sample so far has a label
    correct: dict[str, int] = field(default_factory=lambda: {"original": 0, "converted": 0})
    top5: dict[str, int] = field(default_factory=lambda: {"original": 0, "converted": 0})
    output_error: _Accumulator = field(default_factory=_Accumulator)
    drift: dict[str, _Accumulator] = field(init=False)

    def __post_init__(self) -> None:
        self.drift = {stage: _Accumulator() for stage in self.stages}

    def add(self, o: torch.Tensor, c: torch.Tensor, labels: torch.Tensor, pairs: dict[str, tuple[Any, Any]]) -> None:
        """One batch: logits ``o``, ``c`` ``[N, classes]``, ``labels`` ``[N]`` (``-1``: unknown), stage outputs.

        Raises:
            InputError: a label is out of range.
        """
        for stage, (conv_value, orig_value) in pairs.items():
            if isinstance(conv_value, torch.Tensor) and isinstance(orig_value, torch.Tensor):
                if conv_value.shape == orig_value.shape:
                    self.drift[stage].add(conv_value, orig_value)
        self.count += len(o)
        self.classes = o.shape[1]
        self.agree += int((o.argmax(1) == c.argmax(1)).sum())
        log_o, log_c = F.log_softmax(o, dim=1), F.log_softmax(c, dim=1)
        self.kl_sum += float(F.kl_div(log_c, log_o, log_target=True, reduction="sum"))
        self.output_error.add(c, o)
        if self.labelled and bool((labels == UNLABELLED).any()):
            self.labelled = False
        if self.labelled:
            self._add_accuracy(o, c, labels)

    def _add_accuracy(self, o: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> None:
        if int(labels.max()) >= o.shape[1]:
            raise InputError(f"label {int(labels.max())} is out of range: the model has {o.shape[1]} outputs")
        k = min(5, o.shape[1])
        for side, logits in (("original", o), ("converted", c)):
            self.correct[side] += int((logits.argmax(1) == labels).sum())
            best = logits.topk(k, dim=1).indices
            self.top5[side] += int((best == labels[:, None]).any(1).sum())

    def fidelity(self, data: str) -> Fidelity:
        """The figures of all batches added.

        Raises:
            InputError: no batch was added.
        """
        if self.count == 0:
            raise InputError("no samples to measure fidelity on")
        n, labelled = self.count, self.labelled
        top5 = labelled and self.classes >= 5
        return Fidelity(
            samples=n, agreement=self.agree / n, kl=self.kl_sum / n, relative_error=self.output_error.value,
            accuracy_original=self.correct["original"] / n if labelled else None,
            accuracy_converted=self.correct["converted"] / n if labelled else None,
            top5_original=self.top5["original"] / n if top5 else None,
            top5_converted=self.top5["converted"] / n if top5 else None,
            stages=tuple(StageDrift(s, self.drift[s].value) for s in self.stages
                         if self.drift[s].ref > 0 or self.drift[s].diff > 0),
            data=data,
        )  # fmt: skip


@torch.no_grad()
def measure_fidelity(
    original: nn.Module,
    converted: nn.Module,
    loader: Iterable[Any],
    *,
    stages: Sequence[str] | None = None,
    batches: int | None = None,
    data: str = "",
) -> Fidelity:
    """Compare ``converted`` with ``original`` over every batch of ``loader``.

    Args:
        original: The unconverted model, with its trained weights.
        converted: What :func:`octswap.convert` (or ``heal``) made of it.
        loader: Yields ``(inputs, labels)`` (labels ``-1`` when unknown, see
            :mod:`octswap.data`) or plain input tensors.
        stages: Module names whose outputs to compare (default: the top-level children,
            see :func:`octswap.stages.stage_names`, whose cost-report stage rows are the
            best choice); ``()`` skips the per-stage drift (one plain forward pass each).
        batches: Stop after this many batches.
        data: A description of the data, kept in the result.

    Returns:
        A :class:`Fidelity`; accuracies only when every sample has a label.

    Raises:
        InputError: no samples, the model is not a classifier, or a label is out of range.

    Example:
        >>> fid = measure_fidelity(model, converted, loader)   # doctest: +SKIP
        >>> fid.agreement, fid.accuracy_converted              # doctest: +SKIP
        (0.983, 0.981)
    """
    stages = stage_names(original) if stages is None else list(stages)
    taps = _graph_taps(original, converted, stages)
    device = _device(converted)
    tally = _Tally(stages)
    with eval_mode(original), eval_mode(converted), ExitStack() as stack:
        hooked = stack.enter_context(_hooked(original, converted, stages)) if stages and taps is None else None
        for index, (inputs, labels) in enumerate(iterate(loader)):
            if batches is not None and index >= batches:
                break
            o, c, pairs = _forward(original, converted, inputs.to(device), taps, hooked)
            tally.add(o, c, labels.to(device), pairs)
            if hooked is not None:
                hooked.clear()
    result = tally.fidelity(data)
    logger.info("fidelity: %s", result.summary())
    return result
