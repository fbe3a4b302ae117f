"""Plain-text tables: Markdown and CSV from headers and rows, written once for every caller.

The CLI's output layer (:mod:`octswap.cli.output`), reports (:mod:`octswap.reporting`) and
zoo summaries (:mod:`octswap.zoo`) all render through these two functions, so a Markdown
table or a CSV file looks the same wherever octswap writes one.

Example:
    >>> print(markdown_table(["name", "FLOPs"], [["conv1", "1.2G"]], align="lr"))
    | name | FLOPs |
    |---|---:|
    | conv1 | 1.2G |
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["csv_text", "markdown_table"]


def _cell(value: Any) -> str:
    # A "|" inside a cell would end it early; "/" reads the same in the notes where it occurs.
    return str(value).replace("|", "/")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table, one line per row, no trailing newline.

    Args:
        headers: column headers.
        rows: one sequence of cell values per row (``str()`` of each; ``|`` becomes ``/``).
        align: one letter per column, ``l`` (default) or ``r`` (right-aligned numbers).

    Raises:
        ValueError: ``align`` does not have one letter per column.
    """
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(headers)}), got {align!r}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with a header line and ``\\n`` line ends; keys of a row not in ``fieldnames`` are an error.

    Raises:
        ValueError: a row has a key not in ``fieldnames`` (``csv.DictWriter``'s check).
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
