"""The ``collector`` application and its entry point: one-line errors, contract exit codes."""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperArgument
from typer.core import _TyperParameter as TyperParameter

from collector.cli._signals import Interrupted
from collector.errors import CollectorError, ConfigError, RepositoryNotFound

app = typer.Typer(
    name="collector",
    help="Garbage collector for container registry metadata and storage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would eat the "[env var: COLLECTOR_…]" hints.
    rich_markup_mode=None,
)


def _argument_type(self: TyperParameter, ctx: Any) -> str | None:
    # typer 0.29 prints an argument's annotation after its metavar ("NAME <str>"), which
    # it does not for options: an argument with a metavar shows that alone.
    return None if self.metavar else TyperParameter.display_type_rich(self, ctx)


TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib import metadata  # 30 ms: not on the way to `--help`

        typer.echo(f"collector {metadata.version('registry-collector')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Garbage collector for container registry metadata and storage."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, contract exit codes."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="collector", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        # A group called without its command carries its help: show it, then say what
        # is missing (matched by name, as typer does: the class is private).
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message(), file=sys.stderr)
            _fail(exc.exit_code, "missing command (see the help above)")
        _fail(exc.exit_code, exc.format_message())
    except (ConfigError, RepositoryNotFound) as exc:
        _fail(2, str(exc))
    except CollectorError as exc:
        _fail(1, str(exc))
    except Interrupted as exc:  # the command's work is durable: it says what is left
        print(f"collector: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _fail(130, "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(code: int, message: str) -> NoReturn:
    lines = message.strip().splitlines() or ["failed"]
    print(f"collector: error: {lines[0]}", file=sys.stderr)
    sys.exit(code)
