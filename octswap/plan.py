"""Discovery and planning: find every conv with its shapes, decide what to convert.

A shape probe runs the model once at the requested input size with forward hooks
on every ``nn.Conv2d``; each conv becomes a :class:`ConvSite`. The policy then
turns each site into a :class:`LayerDecision` (octave with ``alpha_in`` /
``alpha_out``, or kept, always with a reason). The :class:`Plan` holds all of
them, serialises to plain data for checkpoints, and is what the rewriters apply.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from octswap.errors import InputError, PolicyError
from octswap.eval_mode import eval_mode
from octswap.layers import CONVERTIBLE_CONVS, check_geometry, conv_padding, low_channels, module_type
from octswap.policy import Policy

__all__ = ["ConvSite", "LayerDecision", "Plan", "decide", "example_input", "output_signature", "output_tensors",
           "policy_plan", "probe", "same_signature"]

logger = logging.getLogger(__name__)

Action = Literal["octave", "keep"]


@dataclass(frozen=True)
class ConvSite:
    """One ``nn.Conv2d`` of a model, as seen by the shape probe."""

    name: str
    module_type: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] | str
    dilation: tuple[int, int]
    groups: int
    bias: bool
    padding_mode: str
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    calls: int = 0
    is_stem: bool = False
    #: Another module holding this conv's weight or bias (tied parameters), if any.
    tied: str | None = None

    @property
    def macs(self) -> int:
        """Multiply-adds per image at the probe size (0 if the probe never ran it)."""
        if self.output_size is None:
            return 0
        per_output = self.kernel_size[0] * self.kernel_size[1] * (self.in_channels // self.groups)
        return self.output_size[0] * self.output_size[1] * self.out_channels * per_output

    @property
    def kind(self) -> str:
        """``depthwise``, ``grouped``, ``pointwise`` (1x1, dense) or ``regular``."""
        if self.groups > 1:
            return "depthwise" if self.groups == self.in_channels else "grouped"
        return "pointwise" if self.kernel_size == (1, 1) else "regular"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConvSite:
        values = dict(data)
        for key in ("kernel_size", "stride", "dilation", "input_size", "output_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if isinstance(values.get("padding"), list):
            values["padding"] = tuple(values["padding"])
        return cls(**values)


@dataclass(frozen=True)
class LayerDecision:
    """What happens to one conv, and why."""

    name: str
    action: Action
    alpha_in: float
    alpha_out: float
    in_low: int
    out_low: int
    reason: str
    site: ConvSite
    #: Graph mode: may this conv take a (high, low) input? (False for skipped convs and
    #: geometry octave convs cannot have; a kept conv that may becomes a "last" conv.)
    accepts_pair: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "site"}
        data["site"] = self.site.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerDecision:
        values = dict(data)
        values["site"] = ConvSite.from_dict(values["site"])
        return cls(**values)


@dataclass(frozen=True)
class Plan:
    """The resolved decisions for every conv of a model, in execution order.

    Example:
        >>> plan = make_plan(torchvision.models.resnet18(), Policy(alpha=0.25))  # doctest: +SKIP
        >>> [d.name for d in plan.octave_layers][:2]                            # doctest: +SKIP
        ['layer1.0.conv1', 'layer1.0.conv2']
    """

    mode: str
    input_shape: tuple[int, int, int]
    policy: Policy
    layers: tuple[LayerDecision, ...]
    warnings: tuple[str, ...] = field(default=())
    #: Graph mode: merges and splits inserted where pairs meet plain-only ops.
    boundaries: tuple[dict[str, str], ...] = field(default=())
    #: Output shapes of the original model at ``input_shape`` (see :func:`output_signature`).
    output: Any = None
    #: Mode ``regions``: the submodules converted in graph mode on their own, as
    #: :class:`octswap.rewrite.regions.Region` dicts (path, module_type, opaque, stopped, convs).
    regions: tuple[dict[str, Any], ...] = field(default=())

    @property
    def octave_layers(self) -> tuple[LayerDecision, ...]:
        return tuple(d for d in self.layers if d.action == "octave")

    @property
    def kept_layers(self) -> tuple[LayerDecision, ...]:
        return tuple(d for d in self.layers if d.action == "keep")

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "input_shape": list(self.input_shape),
            "policy": self.policy.to_dict(),
            "layers": [d.to_dict() for d in self.layers],
            "warnings": list(self.warnings),
            "boundaries": [dict(b) for b in self.boundaries],
            "output": self.output,
            "regions": [dict(r) for r in self.regions],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            mode=data["mode"],
            input_shape=tuple(data["input_shape"]),  # type: ignore[arg-type]
            policy=Policy.from_dict(data["policy"]),
            layers=tuple(LayerDecision.from_dict(d) for d in data["layers"]),
            warnings=tuple(data.get("warnings", ())),
            boundaries=tuple(dict(b) for b in data.get("boundaries", ())),
            output=data.get("output"),
            regions=tuple(dict(r) for r in data.get("regions", ())),
        )


# --------------------------------------------------------------------- probe
def output_signature(value: Any) -> Any:
    """Shapes of a model output, nested like the output (tensors, tuples, dicts)."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, Mapping):
        return {k: output_signature(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [output_signature(v) for v in value]
    return type(value).__name__


def same_signature(got: Any, want: Any, *, per_item: bool = False) -> bool:
    """Whether two :func:`output_signature` results describe the same outputs.

    Tensors in a dict inside a list -- per-image results, as torchvision's detectors return
    (``[{"boxes": [N, 4], "scores": [N], ...}]``) -- may differ in their first dimension,
    the number of detections, which depends on the values; everything else must match.
    """
    if isinstance(want, Mapping):
        return isinstance(got, Mapping) and list(got) == list(want) and all(
            same_signature(got[k], want[k], per_item=per_item) for k in want)  # fmt: skip
    if isinstance(want, list) and want and all(isinstance(v, int) for v in want):  # a tensor's shape
        if not isinstance(got, list) or len(got) != len(want):
            return False
        return got[1:] == want[1:] if per_item else got == want
    if isinstance(want, list):
        inner = any(isinstance(v, Mapping) for v in want)
        return isinstance(got, list) and len(got) == len(want) and all(
            same_signature(g, w, per_item=per_item or (inner and isinstance(w, Mapping))) for g, w in zip(got, want))  # fmt: skip
    return got == want


def output_tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors of a model output (nested tuples, lists, dicts), in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from output_tensors(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from output_tensors(v)


def run_once(model: nn.Module, input_shape: tuple[int, int, int]) -> Any:
    """``model``'s output, in eval mode without gradients, on :func:`example_input` (batch 1).

    Raises:
        InputError: the model does not run at this input shape (any exception its code raises).
    """
    try:
        with eval_mode(model), torch.no_grad():
            return model(example_input(input_shape))
    except Exception as err:  # noqa: BLE001 - any failure of user code means "does not run here"
        shape = "x".join(map(str, (1, *input_shape)))
        raise InputError(f"the model does not run on an input of shape {shape}: {type(err).__name__}: {err}") from err


def example_input(input_shape: tuple[int, int, int], *, batch: int = 1) -> torch.Tensor:
    """The deterministic random input used for probing, verifying and counting."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_shape, generator=gen)


def _site(name: str, conv: nn.Conv2d) -> ConvSite:
    padding = conv_padding(conv)
    return ConvSite(
        name=name, module_type=module_type(conv),
        in_channels=conv.in_channels, out_channels=conv.out_channels,
        kernel_size=tuple(conv.kernel_size), stride=tuple(conv.stride), padding=padding,  # type: ignore[arg-type]
        dilation=tuple(conv.dilation), groups=conv.groups, bias=conv.bias is not None,  # type: ignore[arg-type]
        padding_mode=conv.padding_mode,
    )  # fmt: skip


def probe(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[list[ConvSite], Any]:
    """Run the model once in eval mode and record every ``nn.Conv2d`` with its map sizes.

    Returns:
        The sites in module order, and the output signature of the model.

    Raises:
        InputError: the model does not run at this input shape.
    """
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    seen: dict[str, dict[str, Any]] = {}
    order: list[str] = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            entry = seen.setdefault(name, {"calls": 0})
            entry["calls"] += 1
            if entry["calls"] == 1:
                order.append(name)
                entry["input_size"] = tuple(inputs[0].shape[-2:])
                entry["output_size"] = tuple(output.shape[-2:])

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in convs]
    try:
        output = run_once(model, input_shape)
    finally:
        for handle in handles:
            handle.remove()

    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for owner, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append((owner, module))
    sites = []
    for name, conv in convs:
        site = _site(name, conv)
        others = [o for p in conv.parameters(recurse=False) for o, m in owners[id(p)] if m is not conv]
        if others:
            site = replace(site, tied=others[0])
        info = seen.get(name)
        if info is not None:
            is_stem = bool(order) and order[0] == name and conv.in_channels == input_shape[0]
            site = ConvSite(**{**asdict(site), **info, "is_stem": is_stem})
        sites.append(site)
    return sites, output_signature(output)


# ------------------------------------------------------------------ decisions
def decide(site: ConvSite, policy: Policy) -> LayerDecision:
    """What ``policy`` asks for one probed conv, judged on its own (the layer-mode decision).

    Example:
        >>> sites, _ = probe(torchvision.models.resnet18(), (3, 64, 64))  # doctest: +SKIP
        >>> decide(sites[1], Policy(alpha=0.5)).out_low                    # doctest: +SKIP
        32
    """
    def keep(reason: str, a_in: float = 0.0, a_out: float = 0.0, *, accepts_pair: bool = False) -> LayerDecision:
        return LayerDecision(site.name, "keep", a_in, a_out, 0, 0, reason, site, accepts_pair)

    if site.module_type not in CONVERTIBLE_CONVS:
        return keep(f"custom Conv2d subclass {site.module_type} (its forward would be lost)")
    if site.calls == 0:
        return keep("not run by the probe (unused in eval mode, or on a branch the probe did not take): kept plain")
    if site.tied is not None:
        return keep(f"parameters shared with {site.tied} (tied weights): converting one would untie them")
    res = policy.resolve(site)
    if res.skip:
        return keep(f"policy: skip ({res.source})")
    try:
        check_geometry(site.kernel_size, stride=site.stride, padding=site.padding, dilation=site.dilation)
    except ValueError as err:
        return keep(str(err), res.alpha_in, res.alpha_out)
    # From here on the conv could be octave: in graph mode a kept one becomes a "last"
    # conv when a (high, low) pair reaches it.
    if res.alpha_in == 0 and res.alpha_out == 0:
        return keep(f"alpha 0 ({res.source})", accepts_pair=True)
    if not res.force:
        fewest = min(site.in_channels, site.out_channels)
        if fewest < policy.min_channels:
            what = f"stem: {site.in_channels} input channels" if site.is_stem else f"{fewest} channels"
            return keep(f"{what} < min_channels {policy.min_channels}", res.alpha_in, res.alpha_out, accepts_pair=True)
        assert site.output_size is not None  # set for every conv the probe ran
        if min(site.output_size) < policy.min_feature_size:
            size = "x".join(map(str, site.output_size))
            reason = f"feature map {size} < min_feature_size {policy.min_feature_size}"
            return keep(reason, res.alpha_in, res.alpha_out, accepts_pair=True)
    multiple = policy.channel_multiple
    in_low = low_channels(site.in_channels, res.alpha_in, groups=site.groups, multiple=multiple)
    out_low = low_channels(site.out_channels, res.alpha_out, groups=site.groups, multiple=multiple)
    if in_low == 0 and out_low == 0:
        groups = f" in groups of {site.in_channels // site.groups}" if site.groups > 1 else ""
        rounded = f" (channel_multiple {multiple})" if multiple > 1 else ""
        return keep(
            f"alpha {res.alpha_in}/{res.alpha_out} gives no low-frequency channels for "
            f"{site.in_channels}->{site.out_channels}{groups}{rounded}",
            res.alpha_in, res.alpha_out, accepts_pair=True,
        )  # fmt: skip
    return LayerDecision(site.name, "octave", res.alpha_in, res.alpha_out, in_low, out_low, res.source, site, True)


def _custom_conv_warning(layers: Sequence[LayerDecision]) -> str | None:
    """A warning when custom ``Conv2d`` subclasses (kept: their forward would be lost) hold a quarter
    or more of the model's convs, naming the classes: most of the model may then stay plain."""
    custom = Counter(d.site.module_type for d in layers if d.site is not None and d.reason.startswith("custom Conv2d"))
    total = sum(custom.values())
    if not layers or total * 4 < len(layers):
        return None
    classes = ", ".join(f"{name.rpartition('.')[2]} ({count})" for name, count in custom.most_common(3))
    return (f"{total} of {len(layers)} convs are custom Conv2d subclasses octswap cannot convert, and stay plain: "
            f"{classes} (supported subclasses: octswap.layers.CONVERTIBLE_CONVS)")


def policy_plan(
    model: nn.Module, policy: Policy, *, input_shape: tuple[int, int, int], mode: str, strict: bool = False
) -> Plan:
    """Probe ``model`` and decide, conv by conv, what the policy asks for.

    Each conv is judged on its own (the layer-mode plan); a rewriter may refine the
    decisions for its mode (:func:`octswap.conversion.make_plan` does).

    Raises:
        InputError: the model does not run at ``input_shape``.
        PolicyError: with ``strict``, a rule matches no conv.
    """
    sites, output = probe(model, input_shape)
    layers = tuple(decide(site, policy) for site in sites)
    warnings = []
    for index, rule in enumerate(policy.rules):
        if not any(rule.selects(site) for site in sites):
            message = f"policy rules[{index}] ({rule.selector}) matches no conv in this model"
            if strict:
                raise PolicyError(message)
            logger.warning(message)
            warnings.append(message)
    if not sites:
        warnings.append("the model has no nn.Conv2d layers")
    custom = _custom_conv_warning(layers)
    if custom:
        logger.warning(custom)
        warnings.append(custom)
    return Plan(mode=mode, input_shape=input_shape, policy=policy, layers=layers, warnings=tuple(warnings), output=output)
