"""What amc prints: one shared rich console and the tables every command and workflow prints results in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> None:
    """Print a table; columns from ``numeric_from`` on are right-aligned."""
    table = Table(title=title, title_justify="left")
    # The first column names the rows: never shortened, even when a narrow console squeezes the table.
    first_width = max([len(str(columns[0]))] + [len(str(row[0])) for row in rows]) if columns else 0
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i >= numeric_from else "left",
                         min_width=first_width if i == 0 else None, no_wrap=i == 0)
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
