"""Text for the reports that bench, grid, quality and parity tools print: markdown tables, counted nouns."""

from __future__ import annotations

from typing import Iterable


def table_header(columns: list[str]) -> str:
    """The header line and the separator line of a table with these columns."""
    return "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"


def table_row(cells: Iterable[object]) -> str:
    """One row; cells are already formatted."""
    return "| " + " | ".join(map(str, cells)) + " |"


def plural(count: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def markdown_table(columns: list[str], rows: Iterable[Iterable[object]]) -> str:
    """A whole table: header, separator, one line per row."""
    return "\n".join([table_header(columns), *map(table_row, rows)])
