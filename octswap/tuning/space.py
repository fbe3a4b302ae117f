"""The tuner's search space: *units* of convs that take one alpha together, and cheap re-planning.

A unit is a set of convs whose octave outputs meet: two pairs added or multiplied (a
residual stage's trunk: every block's last conv and the downsample), or the inputs of one
shared conv (a detection head called once per pyramid level). Their splits must agree,
or a merge and a split go between them, so the tuner gives a whole unit one alpha and
never creates a split boundary the user did not ask for. Units come from the graph pass's
own bookkeeping (:attr:`~octswap.rewrite.graph.planning.Refined.joins`), on the plan
the user's policy gives with every candidate conv converted.

Re-planning a candidate assignment (unit -> alpha) re-uses the traced graphs: the
policy's decision per conv, then the graph pass on each traced graph (milliseconds per
candidate, no tracing, no weights copied).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import fx, nn

from octswap.conversion import make_plan
from octswap.plan import ConvSite, LayerDecision, Plan, decide
from octswap.policy import Policy, Rule
from octswap.rewrite.calls import probe_call, record_calls
from octswap.rewrite.graph.planning import is_alone, refine_traced, traced_with_shapes
from octswap.rewrite.regions.discovery import Region, relative
from octswap.rewrite.regions.rewriter import owning_region
from octswap.tuning.activations import following_activations

__all__ = ["REFERENCE_ALPHA", "SearchSpace", "Unit", "octave_macs"]

logger = logging.getLogger(__name__)

#: The alpha every candidate conv gets while the units are found (any alpha > 0 that gives
#: every candidate low channels finds the same joins).
REFERENCE_ALPHA = 0.5


@dataclass(frozen=True)
class Unit:
    """Convs that take one alpha together (their octave outputs meet).

    ``name`` is its first conv's; ``macs`` the multiply-adds of its convs per image at the
    probe size, as plain convs.
    """

    name: str
    convs: tuple[str, ...]
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "convs": list(self.convs), "macs": self.macs}


def octave_macs(site: ConvSite, in_low: int, out_low: int) -> int:
    """Multiply-adds of the octave conv that replaces ``site`` with these low channel counts,
    per image: the four paths of Chen et al. (2019), eq. 3, low-frequency maps at half size
    (rounded up). Grouped convs: each group on one path, as :class:`~octswap.layers.OctaveConv2d`
    builds them. The resampling (pooling, upsampling) is not a multiply-add.

    Example:
        >>> site = ConvSite("c", "Conv2d", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "zeros",
        ...                 (8, 8), (8, 8), 1)
        >>> octave_macs(site, 32, 32) / site.macs   # (1 - a)^2 + (1 - (1 - a)^2) / 4 at a = .5
        0.4375
    """
    if site.output_size is None:
        return 0
    k = site.kernel_size[0] * site.kernel_size[1]
    high_size = site.output_size[0] * site.output_size[1]
    low_size = -(-site.output_size[0] // 2) * -(-site.output_size[1] // 2)
    in_high, out_high = site.in_channels - in_low, site.out_channels - out_low
    strided = site.stride == (2, 2)
    # l2h: computed at the low map's size, then upsampled; a strided conv's low input is
    # already at the output size.
    l2h_size = high_size if strided else low_size
    if site.groups == 1:
        return k * (in_high * out_high * high_size + in_high * out_low * low_size
                    + in_low * out_high * l2h_size + in_low * out_low * low_size)  # fmt: skip
    gin, gout = site.in_channels // site.groups, site.out_channels // site.groups
    gl_in, gl_out = in_low // gin, out_low // gout
    n_hh = site.groups - max(gl_in, gl_out)
    n_hl, n_lh, n_ll = max(0, gl_out - gl_in), max(0, gl_in - gl_out), min(gl_in, gl_out)
    per_group = k * gin * gout
    return per_group * (n_hh * high_size + n_hl * low_size + n_lh * l2h_size + n_ll * low_size)


@dataclass(frozen=True)
class _Graph:
    path: str  # "" for the whole model
    gm: fx.GraphModule
    names: tuple[str, ...]  # the convs this graph rewrites (dotted, in the model)


class _UnionFind:
    def __init__(self, items: Sequence[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, item: str) -> str:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, items: Sequence[str]) -> None:
        roots = [self.find(i) for i in items if i in self.parent]
        for root in roots[1:]:
            self.parent[root] = roots[0]


class SearchSpace:
    """The candidate convs of ``model`` under ``policy``, grouped into units, with cheap
    re-planning of any alpha per unit.

    Args:
        model: The model to tune (not modified).
        policy: Which convs may convert (its guards and skips); the tuner chooses their alphas.
        input_shape: ``(C, H, W)`` of one sample.
        mode: As for :func:`octswap.convert` (``"auto"``: graph, then regions, then layer).

    Raises:
        InputError: the model does not run at ``input_shape``.
        ConversionError: ``mode`` cannot plan the model.

    Example:
        >>> space = SearchSpace(torchvision.models.resnet18(), policy=Policy(), input_shape=(3, 64, 64))  # doctest: +SKIP
        >>> [u.name for u in space.units][:2]                                                         # doctest: +SKIP
        ['layer1.0.conv1', 'layer1.0.conv2']
    """

    def __init__(self, model: nn.Module, *, policy: Policy, input_shape: tuple[int, int, int], mode: str = "auto") -> None:
        reference = make_plan(model, policy.with_alpha(REFERENCE_ALPHA), input_shape=input_shape, mode=mode)
        self.model = model
        self.policy = policy
        self.input_shape = input_shape
        self.mode = reference.mode
        self.regions = reference.regions
        self.sites: tuple[ConvSite, ...] = tuple(d.site for d in reference.layers)
        base = {s.name: decide(s, policy.with_alpha(REFERENCE_ALPHA)) for s in self.sites}
        self.candidates = tuple(name for name, d in base.items() if d.action == "octave")
        self._graphs = self._trace()
        uf = _UnionFind(self.candidates)
        for graph in self._graphs:
            local = [replace(base[n], name=relative(n, graph.path)) for n in graph.names]
            prefix = f"{graph.path}." if graph.path else ""
            for join in refine_traced(graph.gm, local).joins:
                uf.union(sorted(prefix + name for name in join))
        members: dict[str, list[str]] = {}
        for name in self.candidates:
            members.setdefault(uf.find(name), []).append(name)
        by_name = {s.name: s for s in self.sites}
        self.units = tuple(
            Unit(convs[0], tuple(convs), sum(by_name[c].macs for c in convs)) for convs in members.values()
        )
        #: The activation each candidate conv feeds in the traced graphs (through a BatchNorm):
        #: ONNX Runtime times convs with it (:mod:`octswap.tuning.activations`).
        self.activations: dict[str, nn.Module] = {}
        candidates = set(self.candidates)
        for graph in self._graphs:
            local = {relative(n, graph.path): n for n in graph.names if n in candidates}
            for name, activation in following_activations(graph.gm, local).items():
                self.activations[local[name]] = activation
        logger.info("%d candidate convs in %d units (%s mode)", len(self.candidates), len(self.units), self.mode)

    def _trace(self) -> tuple[_Graph, ...]:
        if self.mode == "graph":
            gm = traced_with_shapes(self.model, probe_call(self.input_shape), compare=True)
            return (_Graph("", gm, tuple(s.name for s in self.sites)),)
        if self.mode != "regions":
            return ()
        regions = tuple(Region.from_dict(r) for r in self.regions)
        calls = record_calls(self.model, self.input_shape, [r.path for r in regions])
        graphs = []
        for region in regions:
            module = self.model.get_submodule(region.path)
            gm = traced_with_shapes(module, calls[region.path], opaque=region.opaque_relative(), compare=True)
            names = tuple(s.name for s in self.sites if owning_region(s.name, regions) is region)
            graphs.append(_Graph(region.path, gm, names))
        return tuple(graphs)

    # ------------------------------------------------------------------ candidates
    def policy_for(self, assignment: Mapping[str, float]) -> Policy:
        """The user's policy with one ``name`` rule per candidate conv: its unit's alpha
        (0: the conv keeps plain outputs; in graph mode it still reads a pair that reaches it).
        These rules come first, so they win over the user's own name rules; the global alpha
        is 0, so no conv the tuner did not choose converts (at another input size either)."""
        rules = tuple(
            Rule(name=conv, alpha=float(assignment.get(unit.name, 0.0))) for unit in self.units for conv in unit.convs
        )
        return replace(self.policy.with_alpha(0.0), rules=rules + tuple(self.policy.rules))

    def decisions_for(self, assignment: Mapping[str, float]) -> tuple[LayerDecision, ...]:
        """The plan's decisions (low channels per conv) that ``assignment`` gives, as
        :func:`octswap.convert` would make them, without tracing again."""
        policy = self.policy_for(assignment)
        by_name = {s.name: decide(s, policy) for s in self.sites}
        for graph in self._graphs:
            local = [replace(by_name[n], name=relative(n, graph.path)) for n in graph.names]
            for name, refined in zip(graph.names, refine_traced(graph.gm, local).layers):
                by_name[name] = replace(refined, name=name)
        return tuple(by_name[s.name] for s in self.sites)

    def forms(self, decisions: Sequence[LayerDecision]) -> dict[str, str]:
        """How each octave conv of ``decisions`` runs: ``"pair"`` (pairs flow in and out of
        it) or ``"block"`` (split, octave conv, merge: layer mode, or alone in its graph)."""
        in_graph = {n for g in self._graphs for n in g.names}
        return {d.name: "pair" if d.name in in_graph and not is_alone(d) else "block"
                for d in decisions if d.action == "octave"}  # fmt: skip

    def plan_for(self, assignment: Mapping[str, float]) -> Plan:
        """A plan :func:`octswap.convert` would give for :meth:`policy_for` (probes and traces again)."""
        return make_plan(self.model, self.policy_for(assignment), input_shape=self.input_shape, mode=self.mode)
