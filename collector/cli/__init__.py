"""The ``collector`` command line (README, "Command line").

Exit codes: 0 success, 1 a failure found (``verify``) or a run that failed,
2 a usage or configuration error, always with a one-line reason.
"""

from collector.cli._app import app, main

# Importing the command modules registers their commands on ``app``, in help order.
# isort: off
from collector.cli import registry  # noqa: F401  # migrate, collect, verify, demo
from collector.cli import pipeline  # noqa: F401  # publish, scan, run
from collector.cli import sinks  # noqa: F401  # sink blob-deleter, audit
from collector.cli import dead_letters  # noqa: F401  # dead-letters
from collector.cli import configuration  # noqa: F401  # config show

# isort: on

__all__ = ["app", "main"]
