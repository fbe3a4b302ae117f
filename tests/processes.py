"""Run the octswap command in a child process and press Ctrl-C on it once it is ready."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def interrupt_when(args: list[str], ready: Path, *, timeout: float = 120) -> tuple[int, str]:
    """Start ``octswap ARGS`` in the repository, send SIGINT once ``ready`` exists, and
    return ``(exit code, stderr)``; fails the test if ``ready`` never appears."""
    code = "from octswap.cli import main; main()"
    # A shell without job control starts background jobs with SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: give the child the default so Ctrl-C can reach it.
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ready.exists(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, stderr


def octswap_cmd(*args: object, launcher: tuple[str, ...] | list[str] = ()) -> list[str]:
    """``python [launcher] -m octswap.cli ARGS``."""
    return [sys.executable, *launcher, "-m", "octswap.cli", *map(str, args)]


def heal_one_and_two_processes(common: list, one: Path, two: Path, *, timeout: float | None = None,
                               ) -> tuple[dict, dict]:  # fmt: skip
    """Run ``octswap COMMON`` at batch 8 in one process (to ``one``) and under torchrun with 2 gloo
    processes at batch 4 (to ``two``); return both ``healing`` records (rank 0 alone prints).
    ``timeout`` (seconds) fails a run that hangs instead of waiting for it."""
    first = subprocess.run(octswap_cmd(*common, "--batch-size", "8", "-o", one), cwd=ROOT, capture_output=True,
                           text=True, timeout=timeout)  # fmt: skip
    assert first.returncode == 0, first.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    second = subprocess.run(octswap_cmd(*common, "--batch-size", "4", "-o", two, launcher=launcher), cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=timeout)  # fmt: skip
    assert second.returncode == 0, second.stderr
    return json.loads(first.stdout)["healing"], json.loads(second.stdout)["healing"]
