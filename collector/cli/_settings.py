"""What every command does first: read its settings, then configure logging from them."""

from __future__ import annotations

import os

from collector.config import Settings, load_settings, warn_unknown_variables
from collector.logging import configure_logging


def configured(*, default_log_level: str | None = None, **flags: object) -> Settings:
    """The settings, each flag that is not None winning over its variable; logging
    configured at their log level (at ``default_log_level``, the command's own, when
    neither ``--log-level`` nor COLLECTOR_LOG_LEVEL sets one); then each COLLECTOR_
    variable that names no setting warned about, as a log line on stderr."""
    settings = load_settings(**flags)
    level = settings.log_level
    if default_log_level is not None and "log_level" not in settings.model_fields_set:
        level = default_log_level
    configure_logging(level)
    warn_unknown_variables(os.environ)
    return settings
