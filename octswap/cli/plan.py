"""``octswap plan``: a dry run that shows what would be converted, and why each conv is kept or converted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from octswap.cli.options import (AlphaOpt, ChannelMultipleOpt, FormatOpt, InputSizeOpt, Mode, ModelArgOpt, ModeOpt,
                                 PolicyOpt, StrictOpt)
from octswap.cli.output import Format, Output, TableView, emit
from octswap.cli.resolve import choice, load

if TYPE_CHECKING:
    from octswap.plan import Plan

__all__ = ["command"]

COLUMNS = ["name", "action", "kind", "kernel", "stride", "in_channels", "out_channels", "output_size",
           "alpha_in", "alpha_out", "in_low", "out_low", "reason"]


def _row(d: Any) -> dict[str, Any]:
    return {
        "name": d.name, "action": d.action, "alpha_in": d.alpha_in, "alpha_out": d.alpha_out,
        "in_channels": d.site.in_channels, "out_channels": d.site.out_channels,
        "in_low": d.in_low, "out_low": d.out_low, "kind": d.site.kind,
        "kernel": "x".join(map(str, d.site.kernel_size)), "stride": d.site.stride[0],
        "output_size": "x".join(map(str, d.site.output_size)) if d.site.output_size else "",
        "reason": d.reason,
    }


def plan_output(plan: Plan, model: str) -> Output:
    rows = [_row(d) for d in plan.layers]
    title = f"octswap plan: {model} ({len(plan.octave_layers)} of {len(plan.layers)} convs converted, {plan.mode} mode)"
    align = "".join("l" if c in ("name", "action", "kind", "reason") else "r" for c in COLUMNS)
    layers = TableView(COLUMNS, [[str(r[c]) for c in COLUMNS] for r in rows], title=title, align=align,
                       styles=[None if r["action"] == "octave" else "dim" for r in rows])
    blocks = [layers]
    if plan.regions:
        regions = [[r["path"] or "(whole model)", r["module_type"], str(r["convs"]), ", ".join(r["opaque"]) or "-",
                    r["stopped"] or "-"] for r in plan.regions]  # fmt: skip
        blocks.append(TableView(["region", "module", "octave convs", "opaque calls", "why the module above is not traced"],
                                regions, title="graph-mode regions (pairs flow inside, merged at their outputs)"))
    if plan.boundaries:
        boundaries = [[b["kind"], b["after"], b["before"], b["reason"]] for b in plan.boundaries]
        blocks.append(TableView(["boundary", "after", "before", "reason"], boundaries,
                                title="inserted merges and splits"))
    return Output({"model": model, **plan.to_dict()}, blocks)


def command(
    model: Annotated[str, typer.Argument(help="torchvision name (resnet50) or package.module:factory.")],
    alpha: AlphaOpt = None,
    channel_multiple: ChannelMultipleOpt = None,
    policy: PolicyOpt = None,
    input_size: InputSizeOpt = None,
    fmt: FormatOpt = Format.table,
    model_arg: ModelArgOpt = None,
    mode: ModeOpt = Mode.auto,
    strict: StrictOpt = False,
) -> None:
    """Dry run: show what would be converted, and why each conv is kept or converted."""
    import octswap

    options = choice(alpha=alpha, channel_multiple=channel_multiple, policy=policy, model_arg=model_arg,
                     input_size=input_size, mode=mode, strict=strict)
    loaded = load(model, options)
    the_plan = octswap.make_plan(loaded.model, options.resolved_policy, input_shape=loaded.shape,
                                 mode=options.mode_value, strict=strict)
    emit(plan_output(the_plan, model), fmt)
