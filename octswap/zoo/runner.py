"""Zoo runner: every task in its own worker process, a pool of ``jobs`` at a time.

A crash, an out-of-memory kill or a ``timeout`` in a worker costs that task's record
(marked failed), not the run; ``KeyboardInterrupt`` stops the workers and hands back
the records so far.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from octswap import __version__
from octswap.errors import one_line
from octswap.zoo.manifest import ZooTask
from octswap.zoo.results import RESULT_FIELDS

__all__ = ["run_zoo"]

logger = logging.getLogger(__name__)


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
    """A worker process's body: run one task and send its record (or its failure) back."""
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
    """Every field of a record, those the task decides filled in and the others ``None``."""
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
    """Why a worker exited without a result, from its exit code."""
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"worker died: {name}{hint}"
    return f"worker exited with code {exitcode} without a result"
