"""Zoo runs: convert many models at several alphas, for CI, with results machines and people read.

A manifest (YAML) lists models -- torchvision names, globs such as ``resnet*``, timm
names and globs (``timm:resnet*``), or ``package.module:factory`` -- with alphas, policy, input size, weights and per-model
overrides. Each (model, alpha) runs in its own worker process, so a crash or an
out-of-memory kill costs one record, not the run. Results are written to a folder:
``results.json``, ``results.csv``, ``summary.md`` and ``junit.xml``. A CI matrix runs
:meth:`Manifest.shard` K of N on each machine and :func:`merge_results` joins them.

Manifest::

    version: 1
    defaults:                 # every key optional
      alphas: [0.25, 0.5]
      policy: configs/default.yaml     # relative to the manifest's folder
      input_size: 224                  # N, HxW or CxHxW
      mode: auto                       # auto (graph, else layer), graph or layer
    models:
      - resnet*                        # a name or glob (torchvision classification models)
      - name: mobilenet_v*
        exclude: [mobilenet_v3_small]
        policy: configs/mobilenet_v2.yaml
      - name: fcn_resnet50             # segmentation: dict outputs are fine
      - name: fasterrcnn_resnet50_fpn
        part: backbone                 # convert model.backbone (detection models)
      - name: mypkg.nets:build
        kwargs: {num_classes: 10}
        input_size: 3x64x64
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import hashlib
import json
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import yaml

from octswap import __version__
from octswap.conversion import AUTO, MODES
from octswap.errors import InputError, one_line
from octswap.tables import csv_text, markdown_table

__all__ = [
    "Manifest",
    "MergedRun",
    "ZooTask",
    "check_gates",
    "load_manifest",
    "manifest_from_cli",
    "merge_results",
    "parse_shard",
    "run_zoo",
    "write_results",
]

logger = logging.getLogger(__name__)

_ENTRY_KEYS = ("name", "exclude", "alphas", "policy", "input_size", "mode", "weights", "kwargs", "part")
_DEFAULT_KEYS = ("alphas", "policy", "input_size", "mode", "weights")
RESULT_FIELDS = (
    "model", "alpha", "mode", "mode_used", "part", "status", "flops_before", "flops_after", "flops_ratio",
    "core_flops_before", "core_flops_after", "params_before", "params_after", "convs_converted",
    "convs_kept", "wall_time_s", "error", "checkpoint", "entry_hash", "octswap_version",
)  # fmt: skip


@dataclass(frozen=True)
class ZooTask:
    """One (model, alpha) conversion of a zoo run."""

    model: str
    alpha: float
    mode: str = "auto"
    policy: str | None = None
    input_size: str | None = None  # None: the model's own (timm's pretrained_cfg), else 224
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)  # compared, not hashed
    part: str | None = None

    @property
    def key(self) -> str:
        return f"{self.model}@{self.alpha:g}" + (f"[{self.part}]" if self.part else "")

    @property
    def entry_hash(self) -> str:
        """Changes when anything that decides this task's result changes (policy file included)."""
        data = dataclasses.asdict(self)
        # Files by name and content, not by absolute path: shards on other machines, in
        # other checkouts, hash the same task alike, and a changed file runs again.
        files = {"policy": self.policy, "weights": self.weights}
        module, sep, _ = self.model.rpartition(":")
        if sep and module.endswith(".py"):  # path/to/file.py:factory
            files["model_file"] = module
        for key, path in files.items():
            if path and Path(path).is_file():
                data[key] = f"{Path(path).name} {_file_digest(str(Path(path).resolve()))}"
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    """sha256 of a file's bytes (first 16 hex digits), read once per size and mtime."""
    stat = os.stat(path)
    return _digest(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    tasks: tuple[ZooTask, ...]
    source: str = "<cli>"

    @property
    def task_hashes(self) -> tuple[str, ...]:
        """Every task's :attr:`ZooTask.entry_hash`, in manifest order."""
        return tuple(t.entry_hash for t in self.tasks)

    @property
    def manifest_hash(self) -> str:
        """Identifies the expanded task list (globs resolved): equal on every shard of one run."""
        return _hash_of(self.task_hashes)

    def shard(self, index: int, count: int) -> tuple[ZooTask, ...]:
        """Shard ``index`` of ``count`` (1-based): every ``count``-th task from the ``index``-th.

        Deterministic: it depends only on the expanded task list, which every machine with
        the same manifest, model registries and octswap version builds alike. Interleaving
        spreads a glob's big and small models over the shards.

        Example:
            >>> Manifest(tuple(ZooTask(f"m{i}", 0.5) for i in range(5))).shard(2, 2)  # doctest: +ELLIPSIS
            (ZooTask(model='m1', ...), ZooTask(model='m3', ...))
        """
        if not 1 <= index <= count:
            raise InputError(f"shard {index}/{count}: expected 1 <= K <= N")
        return self.tasks[index - 1 :: count]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)``, 1-based.

    Raises:
        InputError: not of the form K/N with 1 <= K <= N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(f"--shard: expected K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
    return int(match[1]), int(match[2])


# ------------------------------------------------------------------ manifests
def _fail(where: str, message: str) -> InputError:
    return InputError(f"manifest {where}: {message}")


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(where, f"unknown key {key!r}{hint}")


def _alphas(value: Any, where: str) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise _fail(where, f"alphas must be numbers in [0, 1), got {v!r}")
        out.append(float(v))
    if not out:
        raise _fail(where, "alphas is empty")
    return tuple(out)


def _classification_models() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def expand_models(pattern: str, exclude: Sequence[str] = ()) -> list[str]:
    """torchvision names matching a glob (classification models; any registered name when exact),
    or timm's (``timm:resnet*``, through timm's own listing); ``exclude`` globs apply to both.

    Example:
        >>> expand_models("resnet1*")
        ['resnet101', 'resnet152', 'resnet18']
    """
    from torchvision import models

    from octswap.timm_models import PREFIX, is_timm_name, list_timm_models

    if is_timm_name(pattern) and any(ch in pattern for ch in "*?["):
        names = [n for n in list_timm_models(pattern.removeprefix(PREFIX))
                 if not any(fnmatch.fnmatch(n, x) or fnmatch.fnmatch(n, PREFIX + x) for x in exclude)]  # fmt: skip
        if not names:
            raise InputError(f"no timm model matches {pattern!r}")
        return names
    if ":" in pattern:
        return [pattern]
    if not any(ch in pattern for ch in "*?["):
        if pattern not in models.list_models():
            close = difflib.get_close_matches(pattern, models.list_models(), n=3)
            raise InputError(f"unknown model {pattern!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        return [pattern]
    names = [n for n in _classification_models() if fnmatch.fnmatch(n, pattern)]
    names = [n for n in names if not any(fnmatch.fnmatch(n, x) for x in exclude)]
    if not names:
        raise InputError(f"no torchvision classification model matches {pattern!r}")
    return names


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a zoo manifest; paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"manifest not found: {path}") from None
    except yaml.YAMLError as err:
        raise InputError(f"manifest {path}: invalid YAML: {err}") from None
    return manifest_from_dict(data, base=path.parent, source=str(path))


def manifest_from_dict(data: Any, *, base: Path = Path("."), source: str = "<dict>") -> Manifest:
    if not isinstance(data, Mapping):
        raise _fail(source, "expected a mapping with 'models'")
    _check_keys(data, ("version", "defaults", "models"), source)
    if data.get("version", 1) != 1:
        raise _fail(source, f"unsupported version {data.get('version')!r}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise _fail(f"{source}: defaults", "expected a mapping")
    _check_keys(defaults, _DEFAULT_KEYS, f"{source}: defaults")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise _fail(source, "'models' must be a non-empty list")
    tasks: list[ZooTask] = []
    for index, entry in enumerate(entries):
        where = f"{source}: models[{index}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise _fail(where, "expected a model name or a mapping with 'name'")
        _check_keys(entry, _ENTRY_KEYS, where)
        merged = {**defaults, **entry}
        alphas = _alphas(merged.get("alphas", [0.25]), where)
        policy = merged.get("policy")
        if policy is not None:
            policy = str((base / policy) if not Path(policy).is_absolute() else Path(policy))
            if not Path(policy).is_file():
                raise _fail(where, f"policy file not found: {policy}")
        mode = merged.get("mode", AUTO)
        if mode not in MODES:
            raise _fail(where, f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        kwargs = merged.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise _fail(where, "kwargs must be a mapping")
        part = merged.get("part")
        if part is not None and (not isinstance(part, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", part)):
            raise _fail(where, f"part must be a submodule name such as 'backbone', got {part!r}")
        exclude = merged.get("exclude") or []
        try:
            names = expand_models(str(merged["name"]), exclude)
        except InputError as err:
            raise _fail(where, str(err)) from None
        for name in names:
            for alpha in alphas:
                tasks.append(ZooTask(
                    model=name, alpha=alpha, mode=mode, policy=policy, weights=merged.get("weights"),
                    input_size=None if merged.get("input_size") is None else str(merged["input_size"]),
                    kwargs=dict(kwargs), part=part,
                ))  # fmt: skip
    return Manifest(tasks=tuple(dict.fromkeys(tasks)), source=source)  # duplicates run once


def manifest_from_cli(models: str, alphas: str, *, policy: str | None = None, input_size: str | None = None,
                      mode: str = AUTO) -> Manifest:  # fmt: skip
    """The manifest for ``octswap zoo --models 'resnet*,mobilenet_v2' --alpha 0.25,0.5``."""
    try:
        alpha_values = [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise InputError(f"--alpha: expected numbers separated by commas, got {alphas!r}") from None
    data = {
        "defaults": {"alphas": alpha_values, "input_size": input_size, "mode": mode,
                     **({"policy": str(Path(policy).resolve())} if policy else {})},
        "models": [m.strip() for m in models.split(",") if m.strip()],
    }  # fmt: skip
    return manifest_from_dict(data, source="--models")


# ------------------------------------------------------------------- running
def _run_task(task: ZooTask, save_dir: str | None) -> dict[str, Any]:
    """Convert, verify and report one task (inside a worker process)."""
    import octswap
    from octswap.models import default_input_shape, file_stem
    from octswap.shapes import parse_input_shape

    start = time.perf_counter()
    record: dict[str, Any] = {"model": task.model, "alpha": task.alpha, "mode": task.mode, "part": task.part}
    model, source = octswap.load_model(task.model, weights=task.weights, kwargs=task.kwargs)
    target = model
    if task.part:
        target = model.get_submodule(task.part)
    policy = octswap.load_policy(task.policy) if task.policy else octswap.Policy()
    shape = parse_input_shape(task.input_size) if task.input_size is not None else default_input_shape(model)
    converted, plan = octswap.convert(target, policy, alpha=task.alpha, input_shape=shape, mode=task.mode)
    report = octswap.report(target, converted, plan, model_name=task.key, memory=False)
    summary = report.summary()
    record.update(
        status="ok",
        flops_before=summary["flops_before"], flops_after=summary["flops_after"],
        flops_ratio=round(summary["flops_after"] / summary["flops_before"], 6) if summary["flops_before"] else None,
        core_flops_before=summary["core_flops_before"], core_flops_after=summary["core_flops_after"],
        params_before=summary["params_before"], params_after=summary["params_after"],
        convs_converted=summary["convs_converted"], convs_kept=summary["convs_kept"],
        mode_used=plan.mode,
    )  # fmt: skip
    if save_dir is not None and not task.part:
        path = Path(save_dir) / f"{file_stem(task.model)}-oct{task.alpha:g}-{task.mode}.pt"
        octswap.save(path, converted, plan, source=source, report=summary, force=True)
        record["checkpoint"] = str(path)
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    return record


def _worker(task: ZooTask, save_dir: str | None, conn: Any) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        record = _run_task(task, save_dir)
    except BaseException as err:  # noqa: BLE001 - every failure becomes a record
        line = one_line(err)
        record = {"status": "failed", "error": f"{type(err).__name__}: {line}",
                  "traceback": traceback.format_exc(limit=8)}  # fmt: skip
    conn.send(record)
    conn.close()


def _base_record(task: ZooTask) -> dict[str, Any]:
    record = dict.fromkeys(RESULT_FIELDS)
    record.update(model=task.model, alpha=task.alpha, mode=task.mode, part=task.part,
                  entry_hash=task.entry_hash, octswap_version=__version__)  # fmt: skip
    return record


def run_zoo(
    tasks: Sequence[ZooTask],
    *,
    jobs: int = 1,
    save_dir: str | Path | None = None,
    timeout: float | None = None,
    on_start: Callable[[ZooTask], None] | None = None,
    on_done: Callable[[ZooTask, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every task in its own worker process, ``jobs`` at a time.

    A worker that dies (a crash, an out-of-memory kill, ``timeout``) yields a failed
    record; the run goes on. On ``KeyboardInterrupt`` the workers are stopped and the
    exception is re-raised with the records gathered so far attached as ``.records``.

    Example:
        >>> records = run_zoo([ZooTask("resnet18", 0.25)], jobs=1)  # doctest: +SKIP
    """
    # forkserver: workers start from a clean process (no inherited threads) that has
    # already imported torch, so each task costs a fork, not a torch import.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["octswap.zoo", "octswap.conversion", "octswap.reporting", "torchvision"])
    pending = list(tasks)
    running: dict[Any, tuple[ZooTask, Any, float]] = {}
    records: dict[ZooTask, dict[str, Any]] = {}
    save = str(save_dir) if save_dir is not None else None
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                task = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_worker, args=(task, save, send), daemon=True)
                process.start()
                send.close()
                running[process] = (task, receive, time.monotonic())
                if on_start:
                    on_start(task)
            # Sleep until a worker reports or exits (or a second passes, for --timeout).
            mp.connection.wait([r for _, r, _ in running.values()] + [p.sentinel for p in running], timeout=1.0)
            for process in list(running):
                task, receive, started = running[process]
                result: dict[str, Any] | None = None
                if receive.poll():
                    try:
                        result = receive.recv()
                    except EOFError:
                        result = None
                elif process.is_alive():
                    if timeout is not None and time.monotonic() - started > timeout:
                        process.kill()
                        process.join()
                        result = {"status": "failed", "error": f"timed out after {timeout:g} s"}
                    else:
                        continue
                if result is None:
                    process.join(timeout=5)
                    if process.is_alive():
                        continue
                    result = {"status": "failed", "error": _death(process.exitcode)}
                process.join(timeout=5)
                receive.close()
                del running[process]
                record = {**_base_record(task), **{k: v for k, v in result.items() if k != "traceback"}}
                if result.get("traceback"):
                    logger.debug("%s failed:\n%s", task.key, result["traceback"])
                records[task] = record
                if on_done:
                    on_done(task, record)
    except KeyboardInterrupt as interrupt:
        for process in running:
            process.kill()
        for process in running:
            process.join(timeout=5)
        setattr(interrupt, "records", [records[t] for t in tasks if t in records])
        raise
    return [records[t] for t in tasks if t in records]


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker died: {name}{hint}"
    return f"worker exited with code {exitcode} without a result"


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
    counts = {"ok": 0, "failed": 0}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    return csv_text(RESULT_FIELDS, rows)


def summary_markdown(rows: Sequence[Mapping[str, Any]], *, wall_time_s: float | None = None,
                     interrupted: bool = False) -> str:  # fmt: skip
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


def _hash_of(task_hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(task_hashes).encode()).hexdigest()[:16]


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
