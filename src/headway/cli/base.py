"""What every ``headway`` command shares: the typer apps, the consoles, the one-line error
report, and the argument checks that run before any work starts."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from headway.errors import InputError
from headway.io import can_create_in, check_name_lengths, environment_failure

app = typer.Typer(
    help="headway: faster transformer and CNN inference with proof the answers did not change.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks that compare variants side by side.", no_args_is_help=True)
compress_app = typer.Typer(help="Model compression.", no_args_is_help=True)
train_app = typer.Typer(help="Train the built-in models.", no_args_is_help=True)
vit_app = typer.Typer(help="DeiT with sparse attention and token pruning.", no_args_is_help=True)
runner_app = typer.Typer(
    help="headway-runner, the C++ tracker (executors cpp, cpp-heads, cpp-spectral).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
app.add_typer(compress_app, name="compress")
app.add_typer(train_app, name="train")
app.add_typer(vit_app, name="vit")
app.add_typer(runner_app, name="runner")

console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., object])


def report_error(error: Exception) -> None:
    """Print ``error`` as one line on stderr and exit with status 1."""
    errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def reports_errors(command: F) -> F:
    """Turn bad input (:class:`InputError`) and the machine's refusals to write (no space,
    read-only, a name too long) into one line on stderr and exit status 1, and Ctrl-C into
    one line and exit status 130; any other exception is a bug in headway and keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except InputError as error:
            report_error(error)
        except OSError as error:  # the machine refused a write io did not see (a library's)
            failure = environment_failure(error)
            if failure is None:
                raise
            report_error(failure)
        except KeyboardInterrupt:  # the work saw it and stopped cleanly: say so, exit 130
            errors.print("interrupted (Ctrl-C): stopped", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[object]], width: int | None = None
) -> None:
    """Render an experiment's (header, rows) table with rich: the same cells the report's
    Markdown shows, so the two cannot drift. The first column is left-aligned."""
    table = Table(title=title)
    for index, column in enumerate(header):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    (Console(width=max(console.width, width)) if width else console).print(table)


def shown(value: object) -> str:
    """A user-given value (a path, a name) made safe to print inside rich markup."""
    return escape(str(value))


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}: choose from {', '.join(choices)}")
    return value


def some_names(
    text: str | None, option: str, choices: Sequence[str] | None = None, what: str = "name"
) -> list[str] | None:
    """``a, b,c`` → ``["a", "b", "c"]`` (None when the option was not given), each checked
    against ``choices`` when given. A given option that names nothing (``--only ,``) is an
    error rather than meaning "all"."""
    if text is None:
        return None
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    if not chosen:
        raise InputError(f"{option} needs at least one name")
    twice = sorted({n for n in chosen if chosen.count(n) > 1})
    if twice:
        raise InputError(f"{option} names {', '.join(twice)} more than once")
    for name in chosen if choices is not None else []:
        check_choice(name, choices, what)
    return chosen


def positive_ints(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated whole numbers, each at least 1 (batch sizes, counts)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise InputError(f"{option} needs at least one value")
    for value in values:
        at_least(value, 1, option)
    return values


INT_LIMIT = 2**31 - 1  # what the C and C++ libraries under headway take as a count
THREAD_LIMIT = 1024  # threads, workers, streams: far above any machine's cores, far below harm


def at_least(value: float | None, minimum: float, option: str) -> None:
    """``--option`` must be ≥ ``minimum`` (None means "not given" and passes); a whole number
    must also fit the C libraries' counts (at most 2³¹ − 1)."""
    if value is not None and value < minimum:
        raise InputError(f"{option} must be at least {minimum}, got {value}")
    if isinstance(value, int) and value > INT_LIMIT:
        raise InputError(f"{option} must be at most {INT_LIMIT}, got {value}")


def thread_count(value: int | None, option: str) -> None:
    """A count of threads, workers or streams: 1 to ``THREAD_LIMIT`` (each one is an OS
    thread or process: a billion of them would exhaust the machine, not speed it up)."""
    at_least(value, 1, option)
    if value is not None and value > THREAD_LIMIT:
        raise InputError(f"{option} must be at most {THREAD_LIMIT}, got {value}")


SEED_LIMIT = 2**32  # numpy's legacy generators and many tools take seeds below this


def check_seed(seed: int | None, option: str = "--seed") -> None:
    """A seed every generator headway feeds takes: 0 ≤ seed < 2³² (numpy refuses negatives;
    torch and numpy's legacy generators overflow on larger ones)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise InputError(f"{option} must be between 0 and {SEED_LIMIT - 1}, got {seed}")


def positive(value: float | None, option: str) -> None:
    """``--option`` must be a finite number > 0 (None means "not given" and passes): ``inf``
    seconds would time for ever, ``inf`` requests per second divide into zero."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise InputError(f"{option} must be a finite number greater than 0, got {value}")


def fractions(text: str, option: str, low: float = 0.0, high: float = 1.0) -> tuple[float, ...]:
    """Comma-separated numbers, each strictly between ``low`` and ``high``."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise InputError(f"{option} needs at least one value")
    for value in values:
        if not low < value < high:
            raise InputError(f"{option}: {value} is not between {low} and {high}")
    return values


def share_pair(text: str, option: str) -> tuple[float, float]:
    """``START:END`` (or one value for both), each a share in [0, 1)."""
    start, _, end = text.partition(":")
    try:
        pair = float(start), float(end or start)
    except ValueError:
        raise InputError(f"{option} expects START:END, e.g. 0.1:0.5, got {text!r}") from None
    if not all(0 <= v < 1 for v in pair):
        raise InputError(f"{option}: shares must be in [0, 1), got {text!r}")
    return pair


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_writable_under(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    ancestor = _first_existing(path.parent if path.exists() else path)
    if not ancestor.is_dir():
        raise InputError(f"{option} {path}: {ancestor} is a file, not a folder")
    reason = can_create_in(ancestor)
    if reason is not None:
        raise InputError(f"{option} {path}: {ancestor} is not writable ({reason})")


def output_folder(path: Path, option: str) -> Path:
    """A folder to write into: absent (it will be made) or an existing, writable folder."""
    check_name_lengths(path, option)
    if path.is_symlink() and not path.exists():
        raise InputError(
            f"{option} {path}: a symbolic link to {os.readlink(path)}, which does not exist; "
            "make that folder or choose another"
        )
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder")
    if path.is_dir():
        reason = can_create_in(path)
        if reason is not None:
            raise InputError(f"{option} {path}: folder is not writable ({reason})")
        return path
    _check_writable_under(path, option)
    return path


def output_file(path: Path | None, option: str) -> Path | None:
    """A file to (over)write: not a folder, and its folder exists or can be made."""
    if path is None:
        return None
    check_name_lengths(path, option)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path}: file is not writable")
    _check_writable_under(path, option)
    return path
