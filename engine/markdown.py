"""Markdown tables for the reports that bench, quality and parity tools print."""

from __future__ import annotations

from typing import Iterable


def table_header(columns: list[str]) -> str:
    """The header line and the separator line of a table with these columns."""
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def table_row(cells: Iterable[object]) -> str:
    """One row; cells are already formatted."""
    return "| " + " | ".join(map(str, cells)) + " |"


def markdown_table(columns: list[str], rows: Iterable[Iterable[object]]) -> str:
    """A whole table: header, separator, one line per row."""
    return "\n".join([table_header(columns), *map(table_row, rows)])
