"""The ``headway`` command. One module per command group; each command checks every argument,
calls one library function, and prints its result. Bad input ends in one line on stderr and
exit status 1 (:func:`headway.cli.base.reports_errors`)."""

import importlib

from headway.cli.base import app

for _group in (
    "tracking",
    "cnn",
    "vit",
    "export",
    "accelerate",
    "reproduce",
    "report",
    "serve",
):  # `headway --help` lists them in this order
    importlib.import_module(f"headway.cli.{_group}")

__all__ = ["app"]
