"""The trade-off a tuning run chose from, drawn: cost ratio against drop, the tuned curve
beside uniform alphas, and the policy chosen (predicted and measured).

matplotlib (the ``plot`` extra) draws it; the format follows each file's suffix (``.png``,
``.svg``, ``.pdf``: whatever matplotlib's ``savefig`` writes). Files are written atomically.

Example:
    >>> result = octswap.tune(model, data=loader, target_latency=0.7)       # doctest: +SKIP
    >>> write_tradeoff_plot(result, ["tradeoff.png", "tradeoff.svg"], title="resnet18")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octswap.checkpoint import atomic_write
from octswap.errors import InputError, MissingExtraError

if TYPE_CHECKING:
    from octswap.tuning.result import TuneResult

__all__ = ["check_plot_paths", "tradeoff_rows", "write_tradeoff_plot"]


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend.

    Raises:
        MissingExtraError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise MissingExtraError("the trade-off plot needs matplotlib: pip install 'octswap[plot]'") from None
    return plt


def check_plot_paths(paths: Sequence[str | Path], *, force: bool = False) -> list[Path]:
    """The plot files to write, checked before any work.

    Raises:
        InputError: a suffix matplotlib cannot write, or a folder that does not exist.
        OutputExistsError: a file exists and ``force`` is false.
        MissingExtraError: matplotlib is not installed.
    """
    from octswap.errors import OutputExistsError

    plt = _pyplot()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    checked = []
    for path in map(Path, paths):
        kind = path.suffix.lstrip(".").lower()
        if kind not in formats:
            raise InputError(f"--plot {path}: give a file ending in one of .{', .'.join(sorted(formats))}")
        if not (path.parent if str(path.parent) else Path(".")).is_dir():
            raise InputError(f"--plot {path}: the folder {path.parent} does not exist")
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        checked.append(path)
    return checked


def _axis_names(result: TuneResult) -> tuple[str, str]:
    cost = "FLOPs ratio (converted / original)" if result.objective == "flops" else \
        "latency ratio (converted / original)"
    drop = ("agreement lost (points, after BatchNorm re-estimation)" if result.drop_kind == "agreement points"
            else "change proxy (alpha x share of the convs' MACs)")  # fmt: skip
    return cost, drop


def tradeoff_rows(result: TuneResult, *, points: int = 8) -> list[dict[str, Any]]:
    """The trade-off as rows: each uniform alpha, up to ``points`` tuned policies spread along
    the curve, and the chosen policy (predicted, and measured where it was).

    Each row: ``policy`` (a name), ``ratio`` (predicted cost ratio), ``drop``, ``measured_ratio``,
    ``measured_drop`` (``None`` when not measured; for a FLOPs objective the measured ratio is
    fvcore's count of the converted model).
    """
    rows = [{"policy": f"uniform alpha {alpha:g}", "ratio": ratio, "drop": drop, "measured_ratio": None,
             "measured_drop": None} for alpha, ratio, drop in result.uniform]  # fmt: skip
    curve = sorted(result.curve)
    if curve and points > 0:
        step = max(1, len(curve) // points)
        picked = [*curve[::step][: points - 1], curve[-1]]  # both ends
        rows += [{"policy": "tuned (curve)", "ratio": r, "drop": d, "measured_ratio": None, "measured_drop": None}
                 for r, d in picked]  # fmt: skip
    chosen_drop = sum(c.drop for c in result.units if c.alpha)
    measured_drop = None if result.agreement is None or result.drop_kind != "agreement points" else \
        100 * (1 - result.agreement)
    measured_ratio = result.flops_ratio if result.objective == "flops" else result.measured_ratio
    rows.append({"policy": "chosen", "ratio": result.predicted_ratio, "drop": chosen_drop,
                 "measured_ratio": measured_ratio, "measured_drop": measured_drop})
    return rows


def write_tradeoff_plot(result: TuneResult, paths: Sequence[str | Path], *, title: str = "",
                        force: bool = False) -> list[Path]:  # fmt: skip
    """Draw ``result``'s trade-off and write it to each of ``paths`` (format by suffix).

    Args:
        result: What :func:`octswap.tune` returned.
        paths: Files to write.
        title: The plot's title (e.g. the model's name).
        force: Overwrite existing files.

    Returns:
        The files written.

    Raises:
        MissingExtraError: matplotlib is not installed.
        InputError, OutputExistsError: as :func:`check_plot_paths`.
    """
    plt = _pyplot()
    targets = check_plot_paths(paths, force=force)
    cost, drop = _axis_names(result)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if result.curve:
        xs, ys = zip(*sorted(result.curve))
        ax.plot(xs, ys, ".-", color="tab:blue", label="tuned policies (predicted)")
    if result.uniform:
        alphas, xs, ys = zip(*result.uniform)
        ax.plot(xs, ys, "o--", color="tab:orange", label="uniform alpha (predicted)")
        for alpha, x, y in result.uniform:
            ax.annotate(f"{alpha:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    chosen = tradeoff_rows(result, points=0)[-1]
    ax.plot([chosen["ratio"]], [chosen["drop"]], "s", color="tab:green", label="chosen (predicted)")
    if chosen["measured_ratio"] is not None:
        measured_y = chosen["measured_drop"] if chosen["measured_drop"] is not None else chosen["drop"]
        ax.plot([chosen["measured_ratio"]], [measured_y], "*", markersize=12, color="tab:red",
                label="chosen (measured)" if result.objective != "flops" else "chosen (counted)")
    if result.target is not None and result.objective in ("latency", "flops"):
        ax.axvline(result.target, color="grey", linestyle=":", label=f"target {result.target:g}")
    ax.axvline(1.0, color="black", linewidth=0.6)
    ax.set(xlabel=cost, ylabel=drop, title=title or "octswap tune: trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written = []
    try:
        for path in targets:
            kind = path.suffix.lstrip(".").lower()
            written.append(atomic_write(path, lambda tmp, kind=kind: fig.savefig(tmp, format=kind), force=force,
                                        suffix=path.suffix))  # fmt: skip
    finally:
        plt.close(fig)
    return written
