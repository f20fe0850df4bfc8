"""`collector config show`: the configuration in effect, and where each value came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from collector.cli._app import app
from collector.cli._options import LogLevel
from collector.cli._output import json_line, tables

config_app = typer.Typer(help="The collector's configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per setting on stdout.")
    ] = False,
    log_level: LogLevel = None,
) -> None:
    """Print every setting in effect: its environment variable, its value (passwords
    masked) and whether the environment or the default set it. A COLLECTOR_ variable
    that is no setting is warned about. A command's flags win over what is shown."""
    from rich.table import Table

    from collector.cli._settings import configured
    from collector.config import effective, load_settings

    configured(log_level=log_level)
    # What the environment sets: this command's own --log-level is no setting shown.
    rows = effective(load_settings())
    if as_json:
        for row in rows:
            json_line(
                {
                    "setting": row.name,
                    "variable": row.variable,
                    "value": row.value,
                    "source": row.source,
                }
            )
        return
    table = Table(title="configuration", title_justify="left")
    table.add_column("variable", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source")
    for row in rows:
        table.add_row(row.variable, json.dumps(row.value), row.source)
    tables().print(table)
