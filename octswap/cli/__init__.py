"""The ``octswap`` command line: a thin layer over the library.

- :mod:`octswap.cli.app`: the application, global options, and the error map applied once.
- :mod:`octswap.cli.errors`: exception type -> one stderr line and an exit code.
- :mod:`octswap.cli.output`: every result rendered as table, JSON, Markdown or CSV.
- :mod:`octswap.cli.options`: options shared by several commands, and their parsing.
- :mod:`octswap.cli.resolve`: "a model or a checkpoint", loaded and converted in one place.
- one module per command (``convert``, ``report``, ``plan``, ``bench``, ``heal``, ``export``,
  ``zoo``, ``models``), each with a ``command`` function.

Results go to stdout, diagnostics to stderr. Exit codes: 0 success, 1 a failed
operation, 2 bad usage or input, 130 interrupted; ``--debug`` shows the traceback.
"""

from octswap.cli.app import app, main

__all__ = ["app", "main"]
