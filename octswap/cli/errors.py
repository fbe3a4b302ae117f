"""The CLI's one error map: exception type -> one stderr line and an exit code.

Applied once, around whichever command runs (:class:`octswap.cli.app.OctswapGroup`), so
no command catches errors of its own except to add what only it knows (heal's saved
progress). Exit codes: 1 a failed operation, 2 bad usage or input, 130 interrupted.
``--debug`` re-raises instead, for the traceback.
"""

from __future__ import annotations

from octswap.cli.output import error_line
from octswap.errors import OctswapError, one_line

__all__ = ["HANDLED", "UNEXPECTED", "exit_code_for"]

#: Failures inside torch, torchvision or a user's model that octswap did not foresee:
#: one line naming the command that failed, exit 1. Anything else is a bug and keeps its traceback.
UNEXPECTED: tuple[type[BaseException], ...] = (
    RuntimeError, ValueError, TypeError, AttributeError, NotImplementedError, MemoryError, OSError, LookupError,
)


#: Everything the map turns into one line; other exceptions keep their traceback.
HANDLED: tuple[type[BaseException], ...] = (OctswapError, KeyboardInterrupt, *UNEXPECTED)


def exit_code_for(error: BaseException, *, command: str | None) -> int:
    """Print the one-line diagnosis of ``error`` (one of :data:`HANDLED`) on stderr and
    return its exit code.

    Args:
        error: What the command raised.
        command: The command's name (``convert``, ``heal``, ...), named for unexpected errors.
    """
    if isinstance(error, OctswapError):
        error_line(str(error))
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        error_line("interrupted; nothing was written", prefix="octswap: ")
        return 130
    what = f"{command} failed" if command else "failed"
    error_line(f"{what}: {type(error).__name__}: {one_line(error)} (--debug for details)")
    return 1
