"""Mode ``regions``: graph mode region by region, layer mode only outside every region.

For models that do not trace as a whole (:mod:`octswap.rewrite.regions.discovery`).
Each region is planned and rewritten by the graph pass on its own, as the probe called
it; convs outside every region that the policy converts become layer-mode blocks. The
plan records the regions, so a checkpoint replays the same rewrite.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import fx, nn

from octswap.errors import ConversionError, one_line
from octswap.plan import LayerDecision, Plan
from octswap.rewrite.calls import record_calls
from octswap.rewrite.graph.planning import plan_traced, rewrite_traced
from octswap.rewrite.layer import convert_layers, replace_module
from octswap.rewrite.regions.discovery import Region, find_regions, relative
from octswap.rewrite.registry import register_rewriter

__all__ = ["LAYER_MODE", "owning_region", "plan_regions", "rewrite_regions"]

logger = logging.getLogger(__name__)

#: Reason prefix of the octave convs outside every region (converted in layer mode).
LAYER_MODE = "layer mode (outside every traced region)"


def owning_region(name: str, regions: tuple[Region, ...]) -> Region | None:
    """The innermost region whose graph rewrites conv ``name``, or None (layer mode)."""
    owners = [r for r in regions if r.owns(name)]
    return max(owners, key=lambda r: r.depth) if owners else None


def plan_regions(model: nn.Module, plan: Plan) -> Plan:
    """Refine the policy's decisions region by region (graph mode), layer mode elsewhere.

    Raises:
        ConversionError: no part of the model holding a conv traces.
    """
    calls = record_calls(model, plan.input_shape)
    regions, failures = find_regions(model, calls)
    if not regions:
        raise ConversionError(f"no part of the model that holds a conv traces with torch.fx ({failures.get('', '')})")
    decided: dict[str, LayerDecision] = {}
    boundaries: list[dict[str, str]] = []
    counted = []
    for region in regions:
        mine = [d for d in plan.layers if owning_region(d.name, regions) is region]
        local = [replace(d, name=relative(d.name, region.path)) for d in mine]
        module = model.get_submodule(region.path)
        try:
            layers, found = plan_traced(module, local, calls[region.path], opaque=region.opaque_relative())
        except ConversionError as err:  # the graph pass cannot rewrite it (an in-place op on a pair...)
            failures[region.path] = one_line(err)
            logger.info("region %s stays out of graph mode: %s", region.path or "<model>", one_line(err))
            continue
        for original, refined in zip(mine, layers):
            decided[original.name] = replace(refined, name=original.name)
        prefix = f"{region.path}." if region.path else ""
        for b in found:
            reason = f"output of region {region.path or 'the model'}" if b["reason"] == "model output" else b["reason"]
            boundaries.append({**b, "after": prefix + b["after"], "before": prefix + b["before"], "reason": reason})
        counted.append(replace(region, convs=sum(d.action == "octave" for d in layers)))
    if not counted:
        why = failures[regions[0].path]
        raise ConversionError(f"no traced part of the model can be rewritten in graph mode ({why})")
    layers = tuple(decided.get(d.name) or _outside(d, failures) for d in plan.layers)
    return replace(plan, layers=layers, boundaries=tuple(boundaries), regions=tuple(r.to_dict() for r in counted))


def _outside(decision: LayerDecision, failures: dict[str, str]) -> LayerDecision:
    """A conv outside every region: layer mode, with why its nearest enclosing module did not trace."""
    if decision.action != "octave":
        return decision
    parents = [p for p in failures if not p or decision.name.startswith(p + ".")]
    nearest = max(parents, key=len, default=None)
    why = f": {nearest or 'the model'} stays out of graph mode ({failures[nearest]})" if nearest is not None else ""
    return replace(decision, reason=f"{LAYER_MODE}{why}; {decision.reason}")


#: ``nn.Module``'s own bookkeeping, which the graph module has its own of.
_MODULE_STATE = frozenset(vars(nn.Module()))


#: ``fx.GraphModule.meta`` entry whose attributes survive ``copy.deepcopy`` of the graph module.
_PRESERVED = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")


def carry_attributes(original: nn.Module, new: fx.GraphModule) -> None:
    """Give ``new`` (a region's graph module) the plain attributes and properties of ``original``
    that code outside the region reads (smp's ``encoder.output_stride``, torchvision's
    ``backbone.out_channels``): instance values are copied, properties evaluated once; they
    survive deep copies (fx's preserved attributes)."""
    carried = {}
    for key, value in vars(original).items():
        if key not in _MODULE_STATE and key not in vars(new) and not isinstance(value, (nn.Module, torch.Tensor)):
            carried[key] = value
    for cls in type(original).__mro__:
        if issubclass(nn.Module, cls):
            continue  # nn.Module and object
        for key, attribute in vars(cls).items():
            if isinstance(attribute, property) and not hasattr(type(new), key) and key not in vars(new):
                try:
                    carried[key] = attribute.__get__(original)
                except Exception:  # noqa: BLE001 - a property that cannot be read now is not carried
                    continue
    for key, value in carried.items():
        object.__setattr__(new, key, value)
    new.meta.setdefault(_PRESERVED, {}).update(carried)


@register_rewriter("regions", refine=plan_regions)
def rewrite_regions(model: nn.Module, plan: Plan) -> nn.Module:
    """Rewrite each region of ``plan`` in graph mode (innermost first) and the convs outside
    them in layer mode; returns the model (a graph module if the region is the whole model)."""
    regions = tuple(Region.from_dict(r) for r in plan.regions)
    calls = record_calls(model, plan.input_shape, [r.path for r in regions])
    outside = tuple(d for d in plan.layers if owning_region(d.name, regions) is None)
    model = convert_layers(model, replace(plan, layers=outside))
    for region in sorted(regions, key=lambda r: -r.depth):
        mine = [d for d in plan.layers if owning_region(d.name, regions) is region]
        local = [replace(d, name=relative(d.name, region.path)) for d in mine]
        module = model.get_submodule(region.path)
        new = rewrite_traced(module, local, calls[region.path], opaque=region.opaque_relative())
        carry_attributes(module, new)
        if not region.path:
            return new
        replace_module(model, region.path, new)
        logger.debug("region %s rewritten in graph mode", region.path)
    return model
