"""Run the octswap command in a child process and press Ctrl-C on it once it is ready."""

from __future__ import annotations

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
