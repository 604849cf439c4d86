"""What amc prints: one shared rich console, the tables every command and workflow prints results in, and the
plain progress lines long loops write when the output is not a terminal.

Everything amc shows on the console is also copied, as plain text, to the ``amc.console`` logger. The commands'
Hydra logging configuration (``conf/base.yaml``) sends that logger to the run's ``<job>.log`` only (the console
has shown it already), so a job log holds the progress lines and result tables of its run. Used as a library
(no logging configured) the logger drops what it gets and nothing is printed twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

#: The logger that receives a plain copy of what amc shows (progress lines, tables, warnings): Hydra's job log.
log = logging.getLogger("amc.console")

#: The console's width when the output is a file or pipe: wide enough that no table is cut (rich would cut to 80
#: columns there: ``epi…``) and no line wrapped; a table still takes only the width its figures need.
LOG_WIDTH = 1000


class AmcConsole(Console):
    """Rich's console, :data:`LOG_WIDTH` wide when the output is not a terminal (and no width was given to it).

    A ``COLUMNS`` environment variable does not narrow it there: CI runners, containers and pytest-xdist workers
    export ``COLUMNS=80`` for output that is a file, which is exactly where rich would cut the tables.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._width_given = kwargs.get("width") is not None
        super().__init__(*args, **kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if not self._width_given and not self.is_terminal:
            return ConsoleDimensions(LOG_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width_given = True
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


console = AmcConsole()


@dataclass
class ProgressSettings:
    """How often the plain progress lines come (the commands set these from ``conf/base.yaml``).

    Attributes:
        interval_s: at most one line per this many seconds for a loop's steps (search episodes, fine-tune
            epochs, bench cells); 0 writes a line for every step. The last step always gets its line.
        heartbeat_s: inside one long step (the batches of a fine-tune epoch), a line at most every this many
            seconds; 0 writes none.
    """

    interval_s: float = 0.0
    heartbeat_s: float = 60.0


#: The settings :class:`ProgressLog` uses unless it is given its own interval.
progress_settings = ProgressSettings()


def configure_progress(interval_s: float, heartbeat_s: float) -> None:
    """Set how often progress lines come, for every :class:`ProgressLog` created afterwards."""
    progress_settings.interval_s = max(float(interval_s), 0.0)
    progress_settings.heartbeat_s = max(float(heartbeat_s), 0.0)


def is_terminal() -> bool:
    """Whether amc's output goes to a terminal (where rich draws live progress bars), not to a file or pipe."""
    return console.is_terminal


def duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``12m05s``, ``3h07m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def log_line(message: str, echo: bool = True, level: int = logging.INFO) -> None:
    """One plain line to stdout (when ``echo``; flushed, so a pipe or a cluster's ``.out`` file shows it at once)
    and to the job log."""
    if echo:
        print(message, file=sys.stdout, flush=True)
    log.log(level, message)


def warn(message: str) -> None:
    """A warning the user must not miss at the end of a run: one ``warning:`` line on the console (yellow on a
    terminal) and in the job log."""
    console.print(Text(f"warning: {message}", style="yellow"), soft_wrap=True)  # Text: no markup in the message
    log.warning("warning: %s", message)


class ProgressLog:
    """Plain progress lines for a loop of ``total`` steps: ``<label> i/N | <text> | <rate> | ETA <time>``.

    A line goes to the job log at most every ``interval_s`` seconds (the last step always); it is also printed to
    stdout when ``echo`` is on, which by default means when the output is not a terminal (on a terminal a rich
    progress bar shows the same, and printed lines would break it).

    Args:
        label: what a step is (``search episode``, ``epoch``, ``bench=compare cell``).
        total: the number of steps in the loop.
        start: steps already done before this run (a resumed search): the rate and ETA count only this run's.
        interval_s: seconds between two lines; default ``progress_settings.interval_s``.
        echo: print to stdout too; default: when the output is not a terminal.
    """

    def __init__(self, label: str, total: int, start: int = 0, interval_s: float | None = None,
                 echo: bool | None = None) -> None:
        self.label, self.total, self.start = label, int(total), int(start)
        self.interval_s = progress_settings.interval_s if interval_s is None else max(float(interval_s), 0.0)
        self.echo = (not is_terminal()) if echo is None else bool(echo)
        self.started = time.monotonic()
        self.last_line: float | None = None

    def eta_s(self, done: int) -> float | None:
        """Seconds left at the rate of this run's steps so far; None before the first step of this run."""
        run = done - self.start
        if run <= 0:
            return None
        return (time.monotonic() - self.started) / run * max(self.total - done, 0)

    def line(self, done: int, text: str = "") -> str:
        """The line for ``done`` of ``total`` steps."""
        parts = [f"{self.label} {done}/{self.total}"]
        if text:
            parts.append(text)
        run = done - self.start
        if run > 0:
            per = (time.monotonic() - self.started) / run
            parts.append(f"{per:.1f} s each" if per < 120 else f"{duration(per)} each")
        eta = self.eta_s(done)
        parts.append(f"elapsed {duration(time.monotonic() - self.started)}")
        if eta is not None and done < self.total:
            parts.append(f"ETA {duration(eta)}")
        return " | ".join(parts)

    def update(self, done: int, text: str = "", force: bool = False) -> bool:
        """Report that ``done`` steps are finished; writes a line when due. Returns whether it wrote one."""
        now = time.monotonic()
        due = (force or done >= self.total or self.last_line is None
               or now - self.last_line >= self.interval_s)
        if not due:
            return False
        self.last_line = now
        log_line(self.line(done, text), echo=self.echo)
        return True


def fmt_number(value: float | None, digits: int = 3, pct: bool = False, sign: bool = False) -> str:
    """A table cell: ``-`` for a value that was not measured, else ``digits`` decimals (with its sign when ``sign``;
    a percentage with one decimal when ``pct``)."""
    if value is None:
        return "-"
    if pct:
        return f"{value:.1%}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def fmt_mean_std(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` for a table (``-`` when the mean was not measured, the mean alone when there is no spread)."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def fmt_interval(bounds: Sequence[float], digits: int = 3) -> str:
    """A confidence interval of a signed difference for a table: ``[-0.010, +0.049]``."""
    return f"[{fmt_number(bounds[0], digits, sign=True)}, {fmt_number(bounds[1], digits, sign=True)}]"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> None:
    """Print a table; columns from ``numeric_from`` on are right-aligned.

    On a terminal the table fits the window; into a file or pipe it takes the width its figures need (rich would
    cut them to 80 columns: ``epi…``), and a plain copy goes to the job log.
    """
    table = Table(title=title, title_justify="left")
    # The first column names the rows: never shortened, even when a narrow console squeezes the table.
    first_width = max([len(str(columns[0]))] + [len(str(row[0])) for row in rows]) if columns else 0
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i >= numeric_from else "left",
                         min_width=first_width if i == 0 else None, no_wrap=i == 0)
    for row in rows:
        table.add_row(*(str(x) for x in row))
    console.print(table)
    log.info("\n%s", _plain(table))


def _plain(table: Table) -> str:
    """``table`` rendered as plain text at the width it needs, for the job log."""
    plain = Console(width=LOG_WIDTH, no_color=True, color_system=None, force_terminal=False, file=_Discard(),
                    record=True)
    plain.print(table)
    return "\n".join(line.rstrip() for line in plain.export_text().rstrip("\n").splitlines())


class _Discard:
    """A file that keeps nothing: the plain console only records what it renders."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
