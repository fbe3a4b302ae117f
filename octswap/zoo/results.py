"""Zoo results: the files a run writes, reading them back, CI gates, and merging shards.

:func:`write_results` writes ``results.json``, ``results.csv``, ``summary.md`` and
``junit.xml`` (Markdown and CSV through :mod:`octswap.tables`); :func:`read_results`
reads a results.json back (``--baseline``, ``--resume``); :func:`check_gates` lists what
a CI job fails on; :func:`merge_results` joins the outputs of ``--shard K/N`` runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from octswap import __version__
from octswap.errors import InputError
from octswap.tables import csv_text, markdown_table
from octswap.zoo.manifest import _hash_of

__all__ = [
    "RESULT_FIELDS",
    "MergedRun",
    "check_gates",
    "merge_results",
    "read_results",
    "summary_markdown",
    "write_results",
]

RESULT_FIELDS = (
    "model", "alpha", "mode", "mode_used", "part", "status", "flops_before", "flops_after", "flops_ratio",
    "core_flops_before", "core_flops_after", "params_before", "params_after", "convs_converted",
    "convs_kept", "wall_time_s", "error", "checkpoint", "entry_hash", "octswap_version",
)  # fmt: skip


# ------------------------------------------------------------------- outputs
def write_results(records: Sequence[Mapping[str, Any]], out: str | Path, *, source: str = "",
                  wall_time_s: float | None = None, interrupted: bool = False,
                  manifest_hash: str | None = None, task_hashes: Sequence[str] | None = None,
                  shard: str | None = None) -> dict[str, Path]:  # fmt: skip
    """Write results.json, results.csv, summary.md and junit.xml (each atomically).

    results.json also records ``manifest_hash`` and ``task_hashes`` (every task of the
    manifest, in order, not only this ``shard``'s: see :class:`Manifest`), which
    :func:`merge_results` checks and orders by.
    """
    from octswap.checkpoint import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: r.get(k) for k in RESULT_FIELDS} for r in records]
    payload = {
        "octswap_version": __version__,
        "manifest": source,
        "manifest_hash": manifest_hash,
        "shard": shard,
        "wall_time_s": wall_time_s,
        "interrupted": interrupted,
        "counts": _counts(rows),
        "results": rows,
        "task_hashes": list(task_hashes) if task_hashes is not None else None,
    }
    files = {
        "results.json": json.dumps(payload, indent=2) + "\n",
        "results.csv": _csv(rows),
        "summary.md": summary_markdown(rows, wall_time_s=wall_time_s, interrupted=interrupted),
        "junit.xml": _junit(rows),
    }
    written = {}
    for name, text in files.items():
        written[name] = atomic_write(out / name, lambda tmp, t=text: Path(tmp).write_text(t, encoding="utf-8"), force=True)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as handle:
            handle.write(files["summary.md"])
    return written


def _counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Records by status (``ok`` and ``failed`` always present)."""
    counts = {"ok": 0, "failed": 0}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """results.csv's text: one row per record, :data:`RESULT_FIELDS` as columns."""
    return csv_text(RESULT_FIELDS, rows)


def summary_markdown(rows: Sequence[Mapping[str, Any]], *, wall_time_s: float | None = None,
                     interrupted: bool = False) -> str:  # fmt: skip
    """summary.md's text: a heading with the counts, then one table row per record."""
    counts = _counts(rows)
    head = f"## octswap zoo: {counts['ok']} ok, {counts['failed']} failed"
    if wall_time_s is not None:
        head += f" in {wall_time_s:.0f} s"
    headers = ["model", "alpha", "mode", "status", "FLOPs before", "FLOPs after", "ratio", "params",
               "converted/kept", "time (s)", "error"]  # fmt: skip
    cells = []
    for r in rows:
        name = r["model"] + (f" ({r['part']})" if r.get("part") else "")
        ratio = f"{r['flops_ratio']:.3f}" if r.get("flops_ratio") is not None else ""
        flops = [f"{r[k] / 1e9:.3f} G" if r.get(k) is not None else "" for k in ("flops_before", "flops_after")]
        params = f"{r['params_after'] / 1e6:.2f} M" if r.get("params_after") is not None else ""
        convs = f"{r['convs_converted']}/{r['convs_kept']}" if r.get("convs_converted") is not None else ""
        wall = f"{r['wall_time_s']:.1f}" if r.get("wall_time_s") is not None else ""
        mode = r["mode"] if r.get("mode_used") in (None, r["mode"]) else f"{r['mode']} ({r['mode_used']})"
        cells.append([name, f"{r['alpha']:g}", mode, r["status"], flops[0], flops[1], ratio, params, convs, wall,
                      r.get("error") or ""])  # fmt: skip
    lines = [head + (" (interrupted)" if interrupted else ""), "", markdown_table(headers, cells, align="lrllrrrrlrl")]
    lines.append("")
    lines.append("FLOPs are multiply-adds (fvcore's convention), batch size 1.")
    return "\n".join(lines) + "\n"


def _junit(rows: Sequence[Mapping[str, Any]]) -> str:
    """junit.xml's text: one test case per record, a failure for each failed one."""
    counts = _counts(rows)
    total_time = sum(r.get("wall_time_s") or 0 for r in rows)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuites name="octswap-zoo" tests="{len(rows)}" failures="{counts["failed"]}" time="{total_time:.3f}">',
        f'  <testsuite name="octswap-zoo" tests="{len(rows)}" failures="{counts["failed"]}" errors="0" '
        f'time="{total_time:.3f}">',
    ]
    for r in rows:
        name = f"{r['model']}@{r['alpha']:g}" + (f"[{r['part']}]" if r.get("part") else "")
        attrs = f'classname={quoteattr("octswap.zoo." + str(r["mode"]))} name={quoteattr(name)} time="{r.get("wall_time_s") or 0:.3f}"'
        if r["status"] == "ok":
            parts.append(f"    <testcase {attrs}/>")
        else:
            message = str(r.get("error") or "failed")
            parts.append(f"    <testcase {attrs}>")
            parts.append(f"      <failure message={quoteattr(message)}>{escape(message)}</failure>")
            parts.append("    </testcase>")
    parts += ["  </testsuite>", "</testsuites>", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------- gates
def check_gates(rows: Sequence[Mapping[str, Any]], *, max_flops_ratio: float | None = None,
                baseline: Sequence[Mapping[str, Any]] | None = None, tolerance: float = 0.005) -> list[str]:  # fmt: skip
    """Problems a CI job should fail on: failed models, ratios above a bound, regressions.

    A regression is a task that succeeded in ``baseline`` but fails now, or whose FLOPs
    ratio grew by more than ``tolerance`` (absolute).
    """
    problems = [f"{r['model']}@{r['alpha']:g}: failed: {r.get('error')}" for r in rows if r["status"] != "ok"]
    if max_flops_ratio is not None:
        for r in rows:
            ratio = r.get("flops_ratio")
            if r["status"] == "ok" and r.get("convs_converted") and ratio is not None and ratio > max_flops_ratio:
                problems.append(f"{r['model']}@{r['alpha']:g}: FLOPs ratio {ratio:.3f} > {max_flops_ratio:g}")
    if baseline is not None:
        before = {(b["model"], float(b["alpha"]), b.get("mode"), b.get("part")): b for b in baseline}
        for r in rows:
            old = before.get((r["model"], float(r["alpha"]), r.get("mode"), r.get("part")))
            if old is None or old.get("status") != "ok":
                continue
            if r["status"] != "ok":
                continue  # already listed as failed
            if r.get("flops_ratio") is not None and old.get("flops_ratio") is not None:
                if r["flops_ratio"] > old["flops_ratio"] + tolerance:
                    problems.append(f"{r['model']}@{r['alpha']:g}: FLOPs ratio regressed "
                                    f"{old['flops_ratio']:.3f} -> {r['flops_ratio']:.3f}")  # fmt: skip
    return problems


# ------------------------------------------------------------------- reading
def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results.json (for --baseline and --resume)."""
    return list(_read_run(path)["results"])


_NUMBERS = ("alpha", "flops_before", "flops_after", "flops_ratio", "core_flops_before", "core_flops_after",
            "params_before", "params_after", "convs_converted", "convs_kept", "wall_time_s")  # fmt: skip


def _check_row(row: Any) -> None:
    """A record as :func:`write_results` writes it: the fields the outputs format, typed."""
    if not isinstance(row, dict):
        raise TypeError(f"a record is a {type(row).__name__}, not a mapping")
    for key in ("model", "entry_hash"):
        if not isinstance(row.get(key), str):
            raise TypeError(f"a record's {key!r} is not a string")
    if row.get("status") not in ("ok", "failed"):
        raise TypeError(f"a record's status is {row.get('status')!r}")
    for key in _NUMBERS:
        value = row.get(key)
        if (value is None and key != "alpha") or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            continue
        raise TypeError(f"a record's {key!r} is {value!r}, not a number")


def _read_run(path: str | Path) -> dict[str, Any]:
    """A whole results.json, checked (records typed, task hashes a list of strings)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data["results"], list):
            raise TypeError("no list of results")
        for row in data["results"]:
            _check_row(row)
        hashes = data.get("task_hashes")
        if hashes is not None and not (isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)):
            raise TypeError("task_hashes is not a list of strings")
        if data.get("wall_time_s") is not None and not isinstance(data["wall_time_s"], (int, float)):
            raise TypeError("wall_time_s is not a number")
        return data
    except FileNotFoundError:
        raise InputError(f"results file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a results.json") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not an octswap zoo results.json: {err}") from None


# ------------------------------------------------------------------- merging
#: Fields that may differ between two runs of one task with the same outcome.
_RUN_FIELDS = frozenset({"wall_time_s", "checkpoint"})


@dataclass(frozen=True)
class MergedRun:
    """Shard outputs joined by :func:`merge_results`, in manifest order."""

    rows: tuple[dict[str, Any], ...]
    source: str
    manifest_hash: str
    task_hashes: tuple[str, ...]
    #: The slowest shard's wall time: the run's wall time when shards ran in parallel.
    wall_time_s: float | None


def merge_results(folders: Sequence[str | Path]) -> MergedRun:
    """Join the results.json of several ``octswap zoo --shard K/N`` runs into one run.

    Every folder must hold a results.json of the same expanded manifest (``manifest_hash``)
    written by this octswap version. A task in two folders must have the same outcome
    (every field but wall time and checkpoint path). Every task of the manifest must
    have a record: a missing shard or an interrupted one is an error, not a smaller table.

    Example:
        >>> merged = merge_results(["shard-1", "shard-2"])  # doctest: +SKIP
        >>> write_results(merged.rows, "zoo-results", source=merged.source)  # doctest: +SKIP

    Raises:
        InputError: no folders, a folder without results.json, different manifests or
            versions, conflicting outcomes for a task, or tasks without a record.
    """
    if not folders:
        raise InputError("zoo merge: give the shard folders to join")
    runs = []
    for folder in folders:
        path = Path(folder) / "results.json" if Path(folder).is_dir() else Path(folder)
        run = _read_run(path)
        if not run.get("manifest_hash") or not isinstance(run.get("task_hashes"), list):
            raise InputError(f"{path} does not record its manifest (written by an older octswap?); run it again")
        if run.get("octswap_version") != __version__:
            raise InputError(f"{path} was written by octswap {run.get('octswap_version')}, this is {__version__}")
        if _hash_of(run["task_hashes"]) != run["manifest_hash"]:
            raise InputError(f"{path}: its task list does not match its manifest_hash (edited by hand?)")
        listed = set(run["task_hashes"])
        stray = [r["model"] for r in run["results"] if r["entry_hash"] not in listed]
        if stray:
            raise InputError(f"{path}: records not in its manifest's task list: {', '.join(stray[:3])}")
        runs.append((path, run))
    first_path, first = runs[0]
    for path, run in runs[1:]:
        if run["manifest_hash"] != first["manifest_hash"]:
            raise InputError(f"{path} ran a different manifest ({run.get('manifest')}, {run['manifest_hash']}) "
                             f"than {first_path} ({first.get('manifest')}, {first['manifest_hash']})")  # fmt: skip
    records: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, run in runs:
        for row in run["results"]:
            seen = records.get(row.get("entry_hash"))
            if seen is None:
                records[row.get("entry_hash")] = (path, row)
                continue
            differ = sorted(k for k in set(row) | set(seen[1]) if k not in _RUN_FIELDS and row.get(k) != seen[1].get(k))
            if differ:
                key = f"{row.get('model')}@{row.get('alpha')}"
                raise InputError(f"{key} has different outcomes in {seen[0]} and {path} ({', '.join(differ)})")
    order = tuple(first["task_hashes"])
    missing = [h for h in order if h not in records]
    if missing:
        shards = sorted({str(run.get("shard")) for _, run in runs})
        raise InputError(f"{len(missing)} of {len(order)} tasks have no record in these folders "
                         f"(shards given: {', '.join(shards)}; a shard missing or interrupted?)")  # fmt: skip
    walls = [run["wall_time_s"] for _, run in runs if isinstance(run.get("wall_time_s"), (int, float))]
    return MergedRun(rows=tuple(records[h][1] for h in order), source=str(first.get("manifest") or ""),
                     manifest_hash=first["manifest_hash"], task_hashes=order,
                     wall_time_s=max(walls) if walls else None)  # fmt: skip
