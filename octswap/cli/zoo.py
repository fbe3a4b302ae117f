"""``octswap zoo``: convert a whole model zoo (each model in its own process) and write CI-friendly
results; ``octswap zoo merge DIR...`` joins the outputs of ``--shard K/N`` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from octswap.cli.options import FormatOpt, InputSizeOpt, Mode, ModeOpt, PolicyOpt
from octswap.cli.output import Format, Output, emit, err, note
from octswap.errors import InputError

if TYPE_CHECKING:
    from octswap.zoo import ZooRun

__all__ = ["command"]


def _progress_callbacks(progress: Any, bar: Any) -> tuple[Any, Any]:
    current: list[str] = []

    def started(task: Any) -> None:
        current.append(task.key)
        progress.update(bar, description=", ".join(current[-2:]))

    def finished(task: Any, record: dict[str, Any]) -> None:
        current.remove(task.key)
        progress.advance(bar)
        if record["status"] != "ok":
            note(f"failed: {task.key}: {record.get('error')}")

    return started, finished


def _outcome(run: ZooRun, fmt: Format, *, max_flops_ratio: float | None, baseline: list[dict[str, Any]] | None) -> None:
    """Print the summary and the files written; exit 130 when interrupted, 1 when a gate fails."""
    # JSON and CSV: what results.json and results.csv hold; the table: the summary, as summary.md.
    summary = run.summary()
    data = json.loads(run.paths["results.json"].read_text())
    emit(Output(data, [summary.removesuffix("\n")], markdown=summary, csv=run.paths["results.csv"].read_text()), fmt)
    note("wrote " + ", ".join(str(p) for p in run.paths.values()))
    if run.interrupted:
        err.print("octswap: interrupted; results so far were written", highlight=False)
        raise typer.Exit(130)
    problems = run.gate_problems(max_flops_ratio=max_flops_ratio, baseline=baseline)
    for problem in problems:
        note(f"octswap: gate: {problem}")
    if problems:
        raise typer.Exit(1)


def _merge(folders: list[str], out_dir: Path, given: dict[str, Any]) -> ZooRun:
    from octswap import zoo as zoo_lib

    named = [flag for flag, value in given.items() if value]
    if named:
        verb = "does" if len(named) == 1 else "do"
        raise InputError(f"zoo merge joins finished runs: {', '.join(named)} {verb} not apply")
    run = zoo_lib.merge_folders(folders, out_dir)
    note(f"merged {len(folders)} folders: {len(run.rows)} tasks")
    return run


def command(
    manifest: Annotated[Optional[list[str]], typer.Argument(
        metavar="[MANIFEST | merge DIR...]",
        help="Zoo manifest (YAML), or use --models; `merge DIR...` joins the outputs of --shard runs into --out.",
    )] = None,
    out_dir: Annotated[Path, typer.Option(
        "--out", help="Folder for results.json/.csv, summary.md, junit.xml.")] = Path("zoo-results"),
    models: Annotated[Optional[str], typer.Option(
        "--models", help="Without a manifest: names or globs, comma-separated.")] = None,
    alpha: Annotated[str, typer.Option("--alpha", "-a", help="With --models: alphas, comma-separated.")] = "0.25",
    policy: PolicyOpt = None,
    input_size: InputSizeOpt = None,
    mode: ModeOpt = Mode.auto,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Worker processes.")] = 1,
    save: Annotated[bool, typer.Option("--save", help="Also write each converted checkpoint into --out.")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip tasks already done with this manifest entry and version.")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds before a task's worker is killed.")] = None,
    max_flops_ratio: Annotated[Optional[float], typer.Option(
        "--max-flops-ratio", help="Fail when a converted model keeps more than this share of FLOPs.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(
        "--baseline", help="A previous results.json: fail on regressions.")] = None,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="Run shard K/N only: every N-th task from the K-th (for CI matrices; join with `zoo merge`).")
    ] = None,
    fmt: FormatOpt = Format.table,
) -> None:
    """Convert a whole model zoo (each model in its own process) and write CI-friendly results.

    `octswap zoo merge DIR... --out DIR` joins the outputs of `--shard K/N` runs of one
    manifest into one results.json/csv, summary.md and junit.xml.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from octswap import zoo as zoo_lib

    zoo_lib.check_out_dir(out_dir)
    if manifest and manifest[0] == "merge":
        given = {"--models": models, "--shard": shard, "--resume": resume, "--save": save, "--timeout": timeout,
                 "--alpha": alpha != "0.25", "--policy": policy, "--input-size": input_size,
                 "--mode": mode is not Mode.auto, "--jobs": jobs != 1}
        old = zoo_lib.read_results(baseline) if baseline is not None else None
        _outcome(_merge(manifest[1:], out_dir, given), fmt, max_flops_ratio=max_flops_ratio, baseline=old)
        return
    if manifest is not None and len(manifest) > 1:
        raise InputError(f"give one manifest file, got {len(manifest)} arguments "
                         "(to join shards: octswap zoo merge DIR...)")
    if (manifest is None) == (models is None):
        raise InputError("give a manifest file or --models, not both")
    if manifest is not None:
        spec = zoo_lib.load_manifest(Path(manifest[0]))
    else:
        spec = zoo_lib.manifest_from_cli(models or "", alpha, policy=str(policy) if policy else None,
                                         input_size=input_size, mode=mode.value)
    selection = zoo_lib.select_tasks(spec, out_dir, shard=zoo_lib.parse_shard(shard) if shard else None,
                                     resume=resume)
    if selection.shard_note:
        err.print(selection.shard_note, highlight=False)
    old = zoo_lib.read_results(baseline) if baseline is not None else None
    if selection.resume_note:
        err.print(selection.resume_note, highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, transient=True)
    with progress:
        started, finished = _progress_callbacks(progress, progress.add_task("zoo", total=len(selection.todo)))
        run = zoo_lib.run_selection(spec, selection, out_dir, jobs=jobs, save=save, timeout=timeout,
                                    on_start=started, on_done=finished)
    _outcome(run, fmt, max_flops_ratio=max_flops_ratio, baseline=old)
