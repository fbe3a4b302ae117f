"""Stage outputs of both models, for the per-stage drift of :func:`octswap.measure_fidelity`.

In graph mode the converted model's stage outputs are found through the rewrite's origin
tags (a stage may end on a (high, low) pair: merged, low branch upsampled, original channel
order, before comparing); otherwise forward hooks on the same-named modules of both models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import keystr, tree_flatten_with_path

__all__ = ["GraphTaps", "RelativeError", "graph_taps", "hooked", "named_leaves", "origin_roles", "stage_output_nodes"]


def named_leaves(value: Any) -> dict[str, Any]:
    """The leaves of an output by their place in it (``""``, ``['out']``, ``[0]``...): a dict
    and an OrderedDict with the same keys, or a list and a tuple, give the same names."""
    return {keystr(path): leaf for path, leaf in tree_flatten_with_path(value)[0]}


class RelativeError:
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

    def add_tree(self, converted: Any, original: Any) -> None:
        """Add every floating tensor found at the same place in two outputs (dicts, lists of
        tensors...: see :func:`named_leaves`) whose shapes agree."""
        leaves_c = named_leaves(converted)
        for name, o in named_leaves(original).items():
            c = leaves_c.get(name)
            if isinstance(c, torch.Tensor) and isinstance(o, torch.Tensor) and c.is_floating_point():
                if c.shape == o.shape:
                    self.add(c, o)

    @property
    def measured(self) -> bool:
        return self.ref > 0.0 or self.diff > 0.0

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


def stage_output_nodes(gm: fx.GraphModule, stages: Sequence[str]) -> dict[str, str]:
    """Stage (module path) -> the name of the last node of the traced original ``gm`` that runs inside it."""
    last: dict[str, str] = {}
    for node in gm.graph.nodes:
        path = _module_path(node)
        for stage in stages:
            if path == stage or path.startswith(stage + "."):
                last[stage] = node.name
    return last


def origin_roles(converted: fx.GraphModule, origins: set[str]) -> dict[str, dict[str, tuple[fx.Node, Any]]]:
    """Original node name -> ``{role: (node, restore)}`` of the converted graph's nodes standing
    for it (roles ``plain``, or ``high`` and ``low`` of an octave pair, ``restore`` the channel
    order :func:`~octswap.layers.merge_ordered` takes); the rewrite's origin tags tell."""
    from octswap.rewrite.graph import ORIGIN

    roles: dict[str, dict[str, tuple[fx.Node, Any]]] = {}
    for node in converted.graph.nodes:
        for origin, role, restore in node.meta.get(ORIGIN, ()):
            if origin in origins:
                roles.setdefault(origin, {})[role] = (node, restore)
    return roles


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


class GraphTaps:
    """Stage outputs of a graph-mode conversion, found through the rewrite's origin tags."""

    def __init__(self, original: nn.Module, converted: fx.GraphModule, stages: Sequence[str]) -> None:
        self.original, self.converted, self.all_stages = original, converted, list(stages)
        self.stages: list[str] = []

    def prepare(self, x: torch.Tensor) -> None:
        """Trace the original with ``x`` as the probe (its input checks trace as guards, see
        :mod:`octswap.rewrite.graph.guards`) and find the stages' outputs; before :meth:`run`."""
        from octswap.rewrite.graph import trace

        original, converted, stages = self.original, self.converted, self.all_stages
        self.traced = trace(original, probe=(x,))
        by_stage = stage_output_nodes(self.traced, stages)
        self.names = {node: stage for stage, node in by_stage.items()}
        self.roles = origin_roles(converted, set(self.names))
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
def hooked(original: nn.Module, converted: nn.Module, stages: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
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


def graph_taps(original: nn.Module, converted: nn.Module, stages: Sequence[str]) -> GraphTaps | None:
    """Stage taps for a graph-mode conversion that carries the rewrite's origin tags; else ``None`` (hooks)."""
    if not stages or not isinstance(converted, fx.GraphModule):
        return None
    from octswap.rewrite.graph import ORIGIN

    if any(ORIGIN in n.meta for n in converted.graph.nodes):
        return GraphTaps(original, converted, stages)
    return None


