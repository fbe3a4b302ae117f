"""Graph-mode planning and rewriting: run the pass to decide, then to build the new graph."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from octswap.errors import ConversionError, UntraceableError, one_line
from octswap.eval_mode import eval_mode
from octswap.plan import LayerDecision, Plan, output_tensors
from octswap.rewrite.calls import Call, concrete_args, probe_call
from octswap.rewrite.graph import handlers  # noqa: F401 - registers the handlers
from octswap.rewrite.graph.methods import carried_class, carry_over
from octswap.rewrite.graph.passes import GraphPass, Target
from octswap.rewrite.graph.tracing import trace
from octswap.rewrite.layer import convert_decisions
from octswap.rewrite.registry import register_rewriter

__all__ = ["ALONE", "ALONE_MIN_MACS", "Refined", "is_alone", "plan_graph", "plan_traced", "refine_traced", "rewrite_graph",
           "rewrite_traced", "traced_with_shapes"]

#: Reason prefix of a conv converted in layer form inside a graph (see :data:`ALONE_MIN_MACS`).
ALONE = "layer form (alone in the graph, split and merged around it)"

#: A conv that the policy converts but no octave conv sits next to (plain input, and no octave
#: conv reads its output: SSD300's class heads) would only be split and merged again; graph mode
#: keeps it plain unless it costs at least this many multiply-adds per image at the probe size,
#: and then converts it in layer form. Measured on the development VM (batch 1, 2 threads, one
#: conv, layer form against plain, ``octswap.measure_latency``): 512->364 3x3 at 38x38 (2.4 G)
#: 0.57; 128->128 3x3 at 38x38 (0.21 G) 0.82; 64->64 3x3 at 64x64 (0.15 G) 1.14; 256->256 1x1
#: at 38x38 (0.09 G) 1.31; 256->24 3x3 at 19x19 (0.02 G) 3.03: the split and merge cost about
#: a millisecond whatever the conv.
ALONE_MIN_MACS = 200_000_000


def is_alone(decision: LayerDecision) -> bool:
    """Whether graph mode converts this conv in layer form (see :data:`ALONE_MIN_MACS`)."""
    return decision.action == "octave" and decision.reason.startswith(ALONE)


def _targets(decisions: Sequence[LayerDecision]) -> dict[str, Target]:
    return {
        d.name: Target(out_low=d.out_low if d.action == "octave" else 0, accepts_pair=d.accepts_pair, reason=d.reason)
        for d in decisions
    }


def traced_with_shapes(
    model: nn.Module, call: Call, *, opaque: tuple[str, ...] = (), compare: bool = False
) -> fx.GraphModule:
    """``model`` traced as it was called in ``call``, with shapes propagated; with ``compare``,
    checked to compute what the model computes there (a trace can freeze Python that
    depends on values). ``opaque``: submodules called as one node (see :func:`trace`).

    Raises:
        UntraceableError: it does not trace, or the graph fails on the call's arguments.
        ConversionError: the graph computes something else than the model.
    """
    try:
        structure = concrete_args(model, call) or None
    except TypeError as err:
        raise UntraceableError(str(err)) from None
    gm = trace(model, concrete_args=structure, opaque=opaque, probe=call.positional(model))
    try:
        # The graph shares the model's submodules: eval mode for both (BatchNorm running
        # statistics are neither used nor updated).
        with eval_mode(model), eval_mode(gm), torch.no_grad():
            traced = ShapeProp(gm).propagate(*call.positional(model))
    except Exception as err:  # noqa: BLE001 - the trace froze shape-dependent Python the probe contradicts
        raise UntraceableError(f"the traced graph fails at the probe input: {type(err).__name__}: {one_line(err)}") from err
    if compare:
        if call.output is None:
            with eval_mode(model), torch.no_grad():
                eager = call.run(model)
        else:
            eager = call.output
        _check_same(traced, eager)
    return gm


def _check_same(traced: Any, eager: Any) -> None:
    got, want = list(output_tensors(traced)), list(output_tensors(eager))
    if len(got) != len(want):
        raise ConversionError("the torch.fx trace returns other outputs than the model at the probe input")
    for a, b in zip(got, want):
        if isinstance(b, torch.Tensor) and b.is_floating_point():
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-3, atol=1e-4):
                raise ConversionError("the torch.fx trace computes something else than the model at the probe input")


def _unreached(name: str, gm: fx.GraphModule) -> str:
    """Why the traced graph never calls conv ``name``: most often it sits inside a leaf module."""
    modules = dict(gm.named_modules())
    leaves = [str(n.target) for n in gm.graph.nodes if n.op == "call_module" and name.startswith(f"{n.target}.")]
    if not leaves:
        return "not reached by the traced graph"
    leaf = max(leaves, key=len)
    return f"inside {leaf} ({type(modules[leaf]).__name__}), a module torch.fx does not trace into (timm's leaf modules)"


def plan_graph(model: nn.Module, plan: Plan) -> Plan:
    """Turn the policy's decisions into graph-mode decisions for the whole model."""
    layers, boundaries = plan_traced(model, plan.layers, probe_call(plan.input_shape))
    return replace(plan, layers=layers, boundaries=boundaries)


def plan_traced(
    model: nn.Module, decisions: Sequence[LayerDecision], call: Call, *, opaque: tuple[str, ...] = ()
) -> tuple[tuple[LayerDecision, ...], tuple[dict[str, str], ...]]:
    """Turn policy decisions into graph-mode decisions: first/last/octave per conv, boundaries.

    ``model`` is traced as called in ``call`` (``opaque`` submodules as single nodes).
    A conv whose octave output would only be merged again (no octave conv consumes it)
    stays plain; the pass repeats until no such conv is left. Such a conv with a plain input
    is converted in layer form where it is heavy enough to pay for that (:data:`ALONE_MIN_MACS`).
    """
    gm = traced_with_shapes(model, call, opaque=opaque, compare=True)
    refined = refine_traced(gm, decisions)
    return refined.layers, refined.boundaries


@dataclass(frozen=True)
class Refined:
    """Graph-mode decisions for one traced graph (see :func:`refine_traced`)."""

    layers: tuple[LayerDecision, ...]
    boundaries: tuple[dict[str, str], ...]
    #: Sets of convs whose octave outputs meet (at an add or multiply of two pairs, or as the
    #: inputs of one shared conv): their splits must agree, or a merge and split goes between.
    joins: tuple[frozenset[str], ...]


def refine_traced(gm: fx.GraphModule, decisions: Sequence[LayerDecision]) -> Refined:
    """:func:`plan_traced` on a graph already traced with shapes (:func:`traced_with_shapes`):
    cheap enough to call once per candidate policy (the tuner does)."""
    targets = _targets(decisions)
    islands: dict[str, str] = {}
    inconsistent: dict[str, str] = {}
    joins: set[frozenset[str]] = set()
    for _ in range(len(decisions) + 1):
        p = GraphPass(gm, targets, root=None, inconsistent=inconsistent)
        p.run()
        joins.update(p.joins)  # the first pass's: before convs whose outputs only merge go plain
        lonely = [name for name, o in p.outcomes.items() if o.out_low > 0 and name not in p.useful]
        mixed = {name: why for name, why in p.inconsistent.items() if targets[name].accepts_pair}
        if not lonely and not mixed:
            break
        for name in lonely:
            islands[name] = "no octave conv consumes its output"
            t = targets[name]
            targets[name] = Target(0, t.accepts_pair, t.reason)
        for name, why in mixed.items():
            inconsistent[name] = why
            targets[name] = Target(0, False, why)
    final = []
    for d in decisions:
        outcome = p.outcomes.get(d.name)
        if outcome is None:
            why = d.reason if d.action == "keep" else _unreached(d.name, gm)
            final.append(replace(d, action="keep", alpha_in=0.0, alpha_out=0.0, in_low=0, out_low=0, reason=why))
            continue
        in_low, out_low = outcome.in_low, outcome.out_low
        noted = d.name in islands and d.name not in inconsistent
        why = f"{islands[d.name]}; {outcome.reason}" if noted else outcome.reason
        if in_low == 0 and out_low == 0:
            macs = d.site.macs
            if noted and d.action == "octave" and (d.in_low or d.out_low) and macs >= ALONE_MIN_MACS:
                final.append(replace(d, reason=f"{ALONE}: {macs / 1e9:.2f} GMAC per image; {d.reason}"))
                continue
            final.append(replace(d, action="keep", alpha_in=0.0, alpha_out=0.0, in_low=0, out_low=0, reason=why))
            continue
        role = "first: plain input; " if in_low == 0 else "last: " if out_low == 0 else ""
        final.append(replace(
            d, action="octave", in_low=in_low, out_low=out_low, reason=role + why,
            alpha_in=round(in_low / d.site.in_channels, 6), alpha_out=round(out_low / d.site.out_channels, 6),
        ))  # fmt: skip
    return Refined(tuple(final), tuple(p.boundaries), tuple(sorted(joins, key=sorted)))


@register_rewriter("graph", refine=plan_graph)
def rewrite_graph(model: nn.Module, plan: Plan) -> fx.GraphModule:
    """Rebuild ``model`` as an ``fx.GraphModule`` in which pairs flow between layers."""
    return rewrite_traced(model, plan.layers, probe_call(plan.input_shape))


def rewrite_traced(
    model: nn.Module, layers: Sequence[LayerDecision], call: Call, *, opaque: tuple[str, ...] = ()
) -> fx.GraphModule:
    """Rebuild ``model``, traced as called in ``call``, with the graph-mode decisions ``layers``.

    Raises:
        ConversionError: the graph does not give a conv the low channels ``layers`` expect.
    """
    gm = traced_with_shapes(model, call, opaque=opaque)
    alone = [d for d in layers if is_alone(d)]
    paired = {d.name: d.action == "octave" and not is_alone(d) for d in layers}
    targets = {d.name: Target(out_low=d.out_low if paired[d.name] else 0, accepts_pair=paired[d.name],
                              reason=d.reason) for d in layers}  # fmt: skip
    # Octave modules replace convs and BatchNorms inside the traced module (which holds
    # the model's own submodules and fx's tensor constants); the new GraphModule then
    # takes its submodules from it by qualified name.
    root = gm
    p = GraphPass(gm, targets, root=root)
    graph = p.run()
    graph._codegen = copy.deepcopy(gm.graph._codegen)  # the call's structure (lists, dicts of tensors)
    for d in layers:
        outcome = p.outcomes.get(d.name)
        got = (outcome.in_low, outcome.out_low) if outcome else (0, 0)
        want = (d.in_low, d.out_low) if paired[d.name] else (0, 0)
        if got != want:
            raise ConversionError(f"{d.name}: the plan expects {want[0]}/{want[1]} low channels, the graph gives {got[0]}/{got[1]}")
    graph.lint()
    # A graph module with the original's other methods and attributes (a head's compute_loss).
    new = carried_class(type(model))(root, graph, class_name=f"Octave{type(model).__name__}")
    convert_decisions(new, alone)  # plain in the graph, a split-octave-merge block in its place
    new.recompile()
    new.training = model.training  # submodules keep their own flags (frozen BatchNorm stays frozen)
    return carry_over(new, model)
