"""Zoo orchestration: what ``octswap zoo`` does between reading its options and printing.

:func:`check_out_dir` refuses an ``--out`` that cannot be written before any work;
:func:`select_tasks` picks a shard's tasks and, with ``--resume``, the records already
done; :func:`run_selection` runs the rest and writes the results; :func:`merge_folders`
joins shard outputs (``octswap zoo merge``). Each returns data and raises
:class:`~octswap.errors.InputError`; printing, progress bars and exit codes are the CLI's.

Example:
    >>> spec = load_manifest("configs/zoo-smoke.yaml")  # doctest: +SKIP
    >>> selection = select_tasks(spec, Path("zoo-results"), shard=(1, 2), resume=False)  # doctest: +SKIP
    >>> run = run_selection(spec, selection, Path("zoo-results"), jobs=2)  # doctest: +SKIP
    >>> check_gates(run.rows, max_flops_ratio=0.6)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octswap import __version__
from octswap.errors import InputError
from octswap.zoo.manifest import Manifest, ZooTask
from octswap.zoo.results import check_gates, merge_results, read_results, summary_markdown, write_results
from octswap.zoo.runner import run_zoo

__all__ = ["TaskSelection", "ZooRun", "check_out_dir", "merge_folders", "run_selection", "select_tasks"]


@dataclass(frozen=True)
class TaskSelection:
    """The tasks of one ``octswap zoo`` run: its shard's, and which of them still run."""

    #: The shard's tasks (every task without a shard), in manifest order.
    selected: tuple[ZooTask, ...]
    #: The selected tasks to run: those without a record kept by ``--resume``.
    todo: tuple[ZooTask, ...]
    #: Records kept from the previous run in the folder (``--resume``), in manifest order.
    done: tuple[dict[str, Any], ...]
    #: How many tasks the whole manifest has.
    total: int
    #: ``"K/N"`` when sharded, else ``None``; results.json records it.
    shard_label: str | None = None

    @property
    def shard_note(self) -> str | None:
        """The line the CLI prints for a shard (``shard 1/4: 3 of 12 tasks``); ``None`` without one."""
        if self.shard_label is None:
            return None
        return f"shard {self.shard_label}: {len(self.selected)} of {self.total} tasks"

    @property
    def resume_note(self) -> str | None:
        """The line the CLI prints when ``--resume`` keeps records; ``None`` when it keeps none."""
        if not self.done:
            return None
        return f"resuming: {len(self.done)} of {len(self.selected)} tasks already done"


@dataclass(frozen=True)
class ZooRun:
    """A finished (or interrupted) zoo run, or a merge of shards, and the files written."""

    #: The records, in manifest order.
    rows: tuple[dict[str, Any], ...]
    #: Output file name (``results.json``, ...) to the path written.
    paths: dict[str, Path]
    #: Seconds the run took (not rounded; results.json holds it to 0.1 s); a merge: the
    #: slowest shard's, ``None`` when no shard recorded one.
    wall_time_s: float | None
    #: Stopped by ``KeyboardInterrupt``: ``rows`` holds the records finished before.
    interrupted: bool = False

    def summary(self) -> str:
        """summary.md's text for these rows (what ``octswap zoo`` prints)."""
        return summary_markdown(self.rows, wall_time_s=self.wall_time_s, interrupted=self.interrupted)

    def gate_problems(self, *, max_flops_ratio: float | None = None,
                      baseline: Sequence[Mapping[str, Any]] | None = None) -> list[str]:  # fmt: skip
        """:func:`~octswap.zoo.results.check_gates` on these rows."""
        return check_gates(self.rows, max_flops_ratio=max_flops_ratio, baseline=baseline)


def check_out_dir(out_dir: Path) -> None:
    """Fail before any work when --out cannot be a folder we write into.

    Raises:
        InputError: ``out_dir`` is a file, or its nearest existing folder is not writable.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder")
    existing = next(p for p in (out_dir, *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: cannot write there ({existing} is not a writable folder)")


def select_tasks(spec: Manifest, out_dir: Path, *, shard: tuple[int, int] | None = None,
                 resume: bool = False) -> TaskSelection:  # fmt: skip
    """The tasks of shard ``(K, N)`` of ``spec`` (all of them without), less those done.

    With ``resume``, a record in ``out_dir/results.json`` counts as done when its status
    is ok and this octswap version wrote it; it is matched to a task by
    :attr:`~octswap.zoo.manifest.ZooTask.entry_hash`.

    Raises:
        InputError: a shard out of range, or an unreadable results.json to resume from.
    """
    selected = spec.tasks
    label = None
    if shard is not None:
        index, count = shard
        label = f"{index}/{count}"
        selected = spec.shard(index, count)
    done: dict[str, dict[str, Any]] = {}
    if resume and (out_dir / "results.json").is_file():
        for row in read_results(out_dir / "results.json"):
            if row.get("status") == "ok" and row.get("octswap_version") == __version__:
                done[row["entry_hash"]] = row
    return TaskSelection(
        selected=tuple(selected),
        todo=tuple(t for t in selected if t.entry_hash not in done),
        done=tuple(done[t.entry_hash] for t in selected if t.entry_hash in done),
        total=len(spec.tasks),
        shard_label=label,
    )


def run_selection(
    spec: Manifest,
    selection: TaskSelection,
    out_dir: Path,
    *,
    jobs: int = 1,
    save: bool = False,
    timeout: float | None = None,
    on_start: Callable[[ZooTask], None] | None = None,
    on_done: Callable[[ZooTask, dict[str, Any]], None] | None = None,
) -> ZooRun:
    """Run ``selection.todo`` with :func:`~octswap.zoo.runner.run_zoo` and write the results.

    The written rows are ``selection.done`` and the new records, in manifest order. With
    ``save``, checkpoints go to ``out_dir/checkpoints``. ``KeyboardInterrupt`` is not
    raised: the records so far are written and the run says ``interrupted``.
    """
    save_dir = out_dir / "checkpoints" if save else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    interrupted = False
    try:
        records = run_zoo(selection.todo, jobs=jobs, save_dir=save_dir, timeout=timeout,
                          on_start=on_start, on_done=on_done)  # fmt: skip
    except KeyboardInterrupt as interrupt:
        records = getattr(interrupt, "records", [])
        interrupted = True
    by_hash = {r["entry_hash"]: r for r in [*selection.done, *records]}
    rows = [by_hash[t.entry_hash] for t in selection.selected if t.entry_hash in by_hash]
    wall = time.perf_counter() - start
    paths = write_results(rows, out_dir, source=spec.source, wall_time_s=round(wall, 1), interrupted=interrupted,
                          manifest_hash=spec.manifest_hash, task_hashes=spec.task_hashes,
                          shard=selection.shard_label)  # fmt: skip
    return ZooRun(rows=tuple(rows), paths=paths, wall_time_s=wall, interrupted=interrupted)


def merge_folders(folders: Sequence[str | Path], out_dir: Path) -> ZooRun:
    """Join the outputs of ``--shard K/N`` runs (:func:`~octswap.zoo.results.merge_results`) into ``out_dir``.

    Raises:
        InputError: ``out_dir`` is one of ``folders`` (or holds one of the results.json
            given), or the folders do not make one whole run.
    """
    # A folder, or its results.json: either way the folder must not be overwritten.
    resolved = {(Path(f) if not Path(f).is_file() else Path(f).parent).resolve() for f in folders}
    if out_dir.resolve() in resolved:
        raise InputError(f"--out {out_dir} is one of the folders to merge; write the merged run elsewhere")
    merged = merge_results(folders)
    paths = write_results(merged.rows, out_dir, source=merged.source, wall_time_s=merged.wall_time_s,
                          manifest_hash=merged.manifest_hash, task_hashes=merged.task_hashes)  # fmt: skip
    return ZooRun(rows=merged.rows, paths=paths, wall_time_s=merged.wall_time_s)
