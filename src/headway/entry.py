"""The ``headway`` script. It imports nothing heavy before it can answer Ctrl-C, and an
interrupted run leaves without the interpreter's teardown.

Why the teardown is skipped: when the interpreter finalizes, a daemon thread that is inside a
C++ library (torch's kernels, ONNX Runtime's, OpenVINO's) and wakes up to take the GIL back is
ended with a forced unwind, and the unwind through the library's ``noexcept`` frames aborts the
process ("terminate called without an active exception", exit 134 / SIGABRT) after the run had
already said it stopped. So after Ctrl-C the ``atexit`` handlers run (temporary folders, Ray,
child processes), the streams are flushed, and the process ends with status 130 at once. Every
file headway writes is written atomically, so nothing half-written is left either way."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from typing import Any

INTERRUPTED = 130


def leave(status: int) -> None:
    """Run the ``atexit`` handlers, flush, and end the process with ``status`` now."""
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe
                stream.flush()
        os._exit(status)


def _import_cli() -> Any:
    """``headway.cli.app``, with Ctrl-C held until the imports are done: a KeyboardInterrupt
    raised inside an extension's initialisation (a pybind11 call back into Python) is thrown
    through C++ and aborts the process ("terminate called after throwing an instance of
    'pybind11::error_already_set'", SIGABRT: seen once in a CI-like run). The imports take
    seconds; an interrupt during them is answered as soon as they end."""
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: interrupted.append(number))
    try:
        from headway.cli import app
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("interrupted (Ctrl-C): stopped", file=sys.stderr)
        leave(INTERRUPTED)
    return app


def main() -> None:
    """Run the command line; Ctrl-C at any point (imports included) is one line and 130."""
    try:
        app = _import_cli()
    except KeyboardInterrupt:  # Ctrl-C before the holding handler was in place
        print("interrupted (Ctrl-C): stopped", file=sys.stderr)
        leave(INTERRUPTED)
    try:
        app()
    except KeyboardInterrupt:  # outside a command's own handling (argument parsing, help)
        print("interrupted (Ctrl-C): stopped", file=sys.stderr)
        leave(INTERRUPTED)
    except SystemExit as done:
        if done.code == INTERRUPTED:
            leave(INTERRUPTED)
        raise
