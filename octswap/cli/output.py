"""The CLI's one output layer: every command's result rendered as table, JSON, Markdown or CSV.

A command builds an :class:`Output` — the JSON value, and the blocks a person reads
(:class:`TableView` headers + rows, or plain lines) — and calls :func:`emit` with the
user's ``--format``. Markdown and CSV come from the same tables unless the result has a
document form of its own (a report's Markdown, say). Results go to stdout; diagnostics,
warnings and progress bars go to stderr (:data:`err`).

Example:
    >>> view = TableView(["name", "task"], [["resnet18", "classification"]], title="1 models")
    >>> emit(Output(data=[{"name": "resnet18"}], blocks=[view]), Format.markdown)  # doctest: +SKIP
    | name | task |
    |---|---|
    | resnet18 | classification |
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from rich.console import Console
from rich.table import Table

from octswap.errors import printable
from octswap.tables import csv_text, markdown_table

__all__ = ["Format", "Output", "TableView", "emit", "err", "error_line", "note", "out"]

# Piped output (CI logs, files) gets room for wide tables instead of 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


class Format(str, Enum):
    """``-f/--format``: the same four choices on every command that prints a result."""

    table = "table"
    json = "json"
    markdown = "markdown"
    csv = "csv"


@dataclass(frozen=True)
class TableView:
    """Headers and rows of display strings; ``align`` has one ``l``/``r`` per column (the table format)."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    title: str | None = None
    caption: str | None = None
    align: str | None = None
    #: One rich style per row (``"bold"``, ``"dim"``) or ``None``; the table format only.
    styles: Sequence[str | None] | None = None

    def rich(self) -> Table:
        table = Table(title=self.title, caption=self.caption, title_justify="left")
        align = self.align or "l" * len(self.headers)
        for header, side in zip(self.headers, align):
            table.add_column(header, justify="right" if side == "r" else "left")
        for index, row in enumerate(self.rows):
            table.add_row(*row, style=self.styles[index] if self.styles else None)
        return table

    def markdown(self) -> str:
        return markdown_table(self.headers, self.rows)  # left-aligned, as octswap's Markdown has always been

    def csv(self) -> str:
        return csv_text(self.headers, [dict(zip(self.headers, row)) for row in self.rows])


Block = Union[TableView, str]


@dataclass(frozen=True)
class Output:
    """One command's result in every form it can take.

    Attributes:
        data: The JSON value (``-f json``).
        blocks: What ``-f table`` prints, in order: tables, and plain lines.
        markdown: The Markdown document, when the result has one of its own; else its tables.
        csv: The CSV text, when the result has its own; else its first table.
    """

    data: Any
    blocks: Sequence[Block] = field(default_factory=tuple)
    markdown: str | None = None
    csv: str | None = None

    def tables(self) -> list[TableView]:
        return [b for b in self.blocks if isinstance(b, TableView)]


def _plain(text: str, *, end: str = "\n") -> None:
    out.print(text, markup=False, highlight=False, end=end)


def emit(output: Output, fmt: Format) -> None:
    """Print ``output`` on stdout in format ``fmt``."""
    if fmt is Format.json:
        out.print_json(json.dumps(output.data))
    elif fmt is Format.markdown:
        tables = output.tables()
        text = output.markdown if output.markdown is not None else "\n\n".join(t.markdown() for t in tables) + "\n"
        if output.markdown is not None or tables:
            _plain(text, end="")
    elif fmt is Format.csv:
        tables = output.tables()
        if output.csv is not None or tables:
            _plain(output.csv if output.csv is not None else tables[0].csv(), end="")
    else:
        for block in output.blocks:
            if isinstance(block, TableView):
                out.print(block.rich())
            else:
                _plain(block)


def note(text: str) -> None:
    """A diagnostic line on stderr (``wrote ...``, warnings, hints), printed as is."""
    err.print(text, markup=False, highlight=False)


def error_line(message: str, *, prefix: str = "octswap: error: ") -> None:
    """The one stderr line of a failure; control characters in it are shown escaped."""
    err.print(prefix + printable(message), markup=False, highlight=False)
