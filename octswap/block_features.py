"""The outputs of a converted model's blocks beside its output, for block-feature distillation.

Distilling only a model's output gives a deep stack of converted convs one signal at its
end. Matching the outputs of its converted blocks as well (FitNets' hints, Romero et al.,
ICLR 2015; the intermediate features of generalized head network distillation, Matsubara
et al., 2020) tells each block what it should compute. :func:`block_features` wraps both
models so that their forward returns ``{"output": the model's output, "features":
{block: Tensor}}``; :func:`octswap.losses.make_criterion` with ``feature_weight`` adds the
normalised MSE of the features to the output's distillation.

The blocks (:func:`distill_points`): the children of every top-level module that holds a
converted conv (a plain container of blocks, ``nn.Sequential``/``ModuleList``/``ModuleDict``,
opened one more level: a ResNet's ``layer1.0``, smp's ``decoder.blocks.0``), those that hold
one themselves. A model converted whole in graph mode is one traced graph, so forward hooks
on its blocks never fire (the graph calls leaves only): there the blocks' outputs are found
through the rewrite's origin tags, as the per-stage drift finds its stages
(:mod:`octswap.fidelity.taps`), and both models become ``GraphModule``\\ s sharing their
weights whose graphs also return those values (an octave pair merged into the original's
layout: low branch upsampled, channels in the original order). Elsewhere (layer mode,
eager models) forward hooks do (:class:`octswap.feature_taps.Tapped`).

Example:
    >>> student, teacher = block_features(converted, original, probe=images[:1])   # doctest: +SKIP
    >>> sorted(student(images)["features"])                                        # doctest: +SKIP
    ['decoder.blocks.0', 'decoder.blocks.1', 'decoder.blocks.2', 'encoder.layer1.0', ...]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from octswap.errors import InputError
from octswap.feature_taps import Tapped
from octswap.fidelity.taps import origin_roles, stage_output_nodes

__all__ = ["block_features", "distill_points", "training_views"]

logger = logging.getLogger(__name__)

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _converted_paths(model: nn.Module) -> list[str]:
    """Names of the octave convs in ``model`` (a traced graph holds only the modules it calls)."""
    from octswap.layers import OctaveConv2d

    return [name for name, m in model.named_modules() if isinstance(m, OctaveConv2d)]


def _holds_blocks(held: list[nn.Module]) -> bool:
    """Some of these modules have children of their own (blocks, not only layers)."""
    return any(next(c.children(), None) is not None for c in held)


def _children(module: nn.Module, prefix: str, holds: Callable[[str], bool]) -> list[str]:
    """Names of ``module``'s children; a plain container whose converted children are blocks
    (modules with children: ``layer1`` of a ResNet, smp's ``decoder.blocks``) is opened one
    level; one of layers only (``Sequential(conv, bn, relu)``) stays whole."""
    names = []
    for name, child in module.named_children():
        inner = [(f"{prefix}{name}.{sub}", c) for sub, c in child.named_children()]
        held = [c for path, c in inner if holds(path)]
        if isinstance(child, _CONTAINERS) and _holds_blocks(held):
            names.extend(path for path, _ in inner)
        else:
            names.append(f"{prefix}{name}")
    return names


def distill_points(converted: nn.Module, original: nn.Module) -> list[str]:
    """The blocks whose outputs block-feature distillation matches (see the module docstring),
    in the model's order; ``[]`` when ``converted`` holds no octave conv. The module tree is
    ``original``'s (a traced graph keeps plain containers where the model had lists).

    Example: smp ``Unet("resnet18", encoder_depth=3)`` -> ``encoder.layer1.0``, ``encoder.layer1.1``,
    ``encoder.layer2.0``, ``encoder.layer2.1``, ``decoder.blocks.0`` ... ``decoder.blocks.2``,
    ``segmentation_head``.
    """
    converted_convs = _converted_paths(converted)

    def holds(path: str) -> bool:
        return any(c == path or c.startswith(path + ".") for c in converted_convs)

    points: list[str] = []
    for top in _children(original, "", holds):
        if not holds(top):
            continue
        inner = [p for p in _children(original.get_submodule(top), top + ".", holds) if holds(p)]
        opened = _holds_blocks([original.get_submodule(p) for p in inner])
        points.extend(inner if opened else [top])
    if not isinstance(converted, fx.GraphModule):  # regions: hooks fire on a traced region, not inside it
        points = list(dict.fromkeys(_outside_graphs(converted, p) for p in points))
    return points


def _outside_graphs(model: nn.Module, path: str) -> str:
    """``path``, or the outermost traced module (a graph-mode region) holding it."""
    parts = path.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if isinstance(model.get_submodule(prefix), fx.GraphModule):
            return prefix
    return path


def _with_outputs(gm: fx.GraphModule, features: dict[str, Any], name: str) -> fx.GraphModule:
    """``gm``'s graph, also returning ``features`` (block -> a function of the copied graph's
    node map giving that block's value), as a ``GraphModule`` sharing ``gm``'s submodules."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output = graph.graph_copy(gm.graph, env)
    values = {block: make(graph, env) for block, make in features.items()}
    graph.output({"output": output, "features": values})
    graph.lint()
    return fx.GraphModule(gm, graph, class_name=name)


def _whole(tagged: dict[str, Any]) -> bool:
    """The converted graph holds the value: a plain node, or both halves of an octave pair."""
    return "plain" in tagged or {"high", "low"} <= tagged.keys()


def _graph_features(converted: fx.GraphModule, original: nn.Module, points: list[str],
                    probe: torch.Tensor) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    from octswap.rewrite.graph import merge_ordered, trace

    traced = trace(original, probe=(probe,))
    by_point = stage_output_nodes(traced, points)
    roles = origin_roles(converted, set(by_point.values()))
    found = [p for p in points if _whole(roles.get(by_point.get(p, ""), {}))]
    if not found:
        raise InputError("block-feature distillation found none of the converted blocks' outputs in the graph "
                         "(distil the outputs alone: feature weight 0)")  # fmt: skip
    logger.info("block-feature distillation on %s", ", ".join(found))

    def student_value(point: str) -> Any:
        tagged = roles[by_point[point]]

        def make(graph: fx.Graph, env: dict[fx.Node, fx.Node]) -> fx.Node:
            if "plain" in tagged:
                return env[tagged["plain"][0]]
            (high, restore), (low, _) = tagged["high"], tagged["low"]
            return graph.call_function(merge_ordered, (env[high], env[low], restore))

        return make

    nodes = {n.name: n for n in traced.graph.nodes}

    def teacher_value(point: str) -> Any:
        node = nodes[by_point[point]]
        return lambda graph, env: env[node]

    student = _with_outputs(converted, {p: student_value(p) for p in found}, "BlockFeatures")
    teacher = _with_outputs(traced, {p: teacher_value(p) for p in found}, "OriginalBlockFeatures")
    return student, teacher


class _Hooked(nn.Module):
    """``{"output", "features"}`` of an eager model through forward hooks (:class:`Tapped`)."""

    def __init__(self, model: nn.Module, points: list[str]) -> None:
        super().__init__()
        self.tapped = Tapped(model, points, complete=True)

    def forward(self, *args: Any) -> dict[str, Any]:
        features, output = self.tapped(*args)
        return {"output": output, "features": features}


def block_features(converted: nn.Module, original: nn.Module, *, probe: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """``(student, teacher)``: ``converted`` and ``original`` returning ``{"output", "features"}``
    (see the module docstring), sharing their weights (training ``student`` trains ``converted``).

    Args:
        converted: The converted model (graph mode with the rewrite's origin tags, or eager).
        original: Its original, with the same module names.
        probe: One input batch ``[N, C, H, W]`` on the models' device (traces the original).

    Raises:
        InputError: no converted block, or none found in the graph.
    """
    points = distill_points(converted, original)
    if not points:
        raise InputError("block-feature distillation needs a model with octave convs; this one has none")
    if isinstance(converted, fx.GraphModule):
        from octswap.rewrite.graph import ORIGIN

        if any(ORIGIN in n.meta for n in converted.graph.nodes):
            return _graph_features(converted, original, points, probe)
    logger.info("block-feature distillation on %s", ", ".join(points))
    return _Hooked(converted, points), _Hooked(original, points)


def training_views(
    student: nn.Module, teacher: nn.Module, *, features: Sequence[str] | None, own_loss: bool, feature_weight: float,
    probe: Callable[[], torch.Tensor],
) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    """What a healing step calls for ``(student, teacher)``: the models themselves; with
    ``features`` (feature distillation of named modules) both :class:`Tapped` (the student
    ``complete`` with ``own_loss``: a detector's loss dict beside); with ``feature_weight > 0``
    :func:`block_features` (``probe()``: one input batch on the models' device)."""
    if feature_weight > 0:
        return block_features(student, teacher, probe=probe())
    if features:
        return Tapped(student, features, complete=own_loss), Tapped(teacher, features)
    return student, teacher
