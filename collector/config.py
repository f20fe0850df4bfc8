"""One typed settings object, read from the environment and overridden by flags."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import structlog
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from collector.errors import ConfigError
from collector.limits import (
    BATCH_SIZE,
    LOG_LEVELS,
    MAX_MISSING,
    POLL_RECORDS,
    RELAY_BATCH_SIZE,
    REPOSITORY_CONCURRENCY,
)

log = structlog.get_logger(__name__)

#: COLLECTOR_ variables that are not settings: read by the project's scripts and tests.
OTHER_VARIABLES = frozenset(
    f"COLLECTOR_{name}"
    for name in (
        "SERVICES_DIR",  # scripts/services
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        "KAFKA_SASL_SSL_PORT",
        "KAFKA_SSL_PORT",
        "KAFKA_LIBS_ROOT",
        "TEST_DATABASE",  # tests
        "TEST_ADMIN_URL",
        "TEST_SWEEP_SCALE",
        "FAULTS",
    )
)
#: Shown in place of a secret.
MASK = "********"

#: The gzipped empty layer: referenced implicitly by many images, never collected.
EMPTY_LAYER_DIGEST = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"


class Settings(BaseSettings):
    """Every field reads ``COLLECTOR_<FIELD>`` from the environment."""

    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/registry"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_requests: str = "registry.gc.requests"
    topic_removals: str = "registry.gc.removals"
    topic_dead_letter: str = "registry.gc.dead-letter"
    group_id: str = "registry-collector"
    #: The consumer group of `collector sink blob-deleter` on the removals topic.
    sink_group_id: str = "registry-gc-blob-deleter"
    #: The blob storage `collector sink blob-deleter` deletes from: DIR/sha256/ab/abcdef…
    #: (checked by that command alone).
    storage_root: Path | None = None
    topic_partitions: int = Field(default=12, ge=1)
    #: -1: the broker's default.replication.factor.
    topic_replication_factor: int = Field(default=-1, ge=-1)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: The CA bundle that signed the brokers' certificates (default: the system's).
    kafka_ssl_cafile: str | None = None
    #: A client certificate (PEM, with its chain) and key, for brokers that require one.
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None

    #: How long a send may wait for the broker's acknowledgement: past it the
    #: service logs the broker outage and goes on waiting (its idempotent producer
    #: never drops a send), and `publish`/`scan` fail. Also bounds each request.
    kafka_produce_timeout_s: float = Field(default=30.0, ge=1, le=600)

    #: How long a command waits for an unreachable database or broker before
    #: it gives up with a one-line error (retrying with backoff meanwhile).
    connect_wait_s: float = Field(default=30.0, ge=0)

    #: Objects the engine decides per transaction (candidates claimed, roots taken).
    batch_size: int = Field(default=500, ge=BATCH_SIZE[0], le=BATCH_SIZE[1])
    #: Records the intake of `collector run` fetches per poll; each partition's share is
    #: admitted in one transaction.
    intake_poll_records: int = Field(default=500, ge=POLL_RECORDS[0], le=POLL_RECORDS[1])
    #: Records the blob deleter fetches per poll; each partition's share is one batch,
    #: deleted and committed together (``max_missing`` is a share of it).
    sink_poll_records: int = Field(default=500, ge=POLL_RECORDS[0], le=POLL_RECORDS[1])
    #: Outbox events the relay claims, publishes and marks published in one transaction.
    relay_batch_size: int = Field(default=500, ge=RELAY_BATCH_SIZE[0], le=RELAY_BATCH_SIZE[1])
    repository_concurrency: int = Field(
        default=4, ge=REPOSITORY_CONCURRENCY[0], le=REPOSITORY_CONCURRENCY[1]
    )
    protected_digests: list[str] = Field(default_factory=lambda: [EMPTY_LAYER_DIGEST])
    #: The orphan sweep leaves an unreferenced object alone until it is this old,
    #: so that an object a registry writes in several transactions is never raced.
    orphan_grace_s: float = Field(default=3600.0, ge=0)
    #: `scan --every --orphans` sweeps the registry for orphans this often.
    orphan_sweep_every_s: float = Field(default=6 * 3600.0, gt=0)
    #: Ids of one table an orphan sweep judges per transaction.
    orphan_sweep_span: int = Field(default=10_000, ge=1, le=10_000_000)
    #: The relay polls the outbox this often when no NOTIFY wakes it earlier; a
    #: standing-by relay tries to become the publishing one as often.
    relay_poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    #: Workers look for due requests this often when the intake does not wake
    #: them (work admitted by another process, deferred work coming due).
    work_poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    #: Request values larger than this are refused (reason ``oversized-value``).
    max_request_bytes: int = Field(default=1_048_576, ge=1)
    #: Due requests of different repositories a worker claims at once and collects
    #: in one context (batches then span them, as in `collect --all`).
    work_batch_size: int = Field(default=16, ge=1, le=1000)
    #: Due requests waiting in gc.request above which the intake pauses the topic.
    intake_max_backlog: int = Field(default=10_000, ge=1)
    #: How long finished requests (the dedupe window for redelivered and replayed
    #: events) and published outbox rows are kept: a week, Kafka's default retention.
    retention_s: float = Field(default=7 * 24 * 3600, ge=0)
    #: The blob deleter stops, committing nothing, when more than this share of a
    #: batch's files are gone that no deleter deleted (its root is not the storage).
    max_missing: float = Field(default=0.1, ge=MAX_MISSING[0], le=MAX_MISSING[1])
    #: Serve Prometheus metrics and the /healthz, /readyz probes of `collector run` and
    #: `sink blob-deleter` on this port (unset: not served).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    #: Where the metrics endpoint listens: loopback unless told otherwise.
    metrics_address: str = "127.0.0.1"
    #: On SIGTERM, how long requests in hand may take before they are abandoned
    #: (rolled back, and redone by the next run).
    shutdown_timeout_s: float = Field(default=30.0, ge=0)
    #: debug, info, warning or error, in any case (`demo` is quieter: warning).
    log_level: str = "info"

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_log_level(cls, value: object) -> object:
        if isinstance(value, str) and value.lower() in LOG_LEVELS:
            return value.lower()
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, not {value!r}")

    @field_validator("storage_root", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty variable names no root: it is not the current directory.
        return None if value == "" else value

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Self:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username):
            raise ValueError(
                f"kafka_security_protocol {self.kafka_security_protocol} needs"
                " kafka_sasl_mechanism, kafka_sasl_username and kafka_sasl_password"
            )
        if sasl and self.kafka_sasl_password is None:
            raise ValueError("kafka_sasl_password is needed with kafka_sasl_username")
        if not sasl and self.kafka_sasl_mechanism:
            raise ValueError(
                f"kafka_sasl_mechanism is set but kafka_security_protocol is"
                f" {self.kafka_security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls = self.kafka_security_protocol in ("SSL", "SASL_SSL")
        tls_files = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if not tls and any(tls_files):
            raise ValueError(
                f"kafka_ssl_* files are set but kafka_security_protocol is"
                f" {self.kafka_security_protocol}: use SSL or SASL_SSL"
            )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("kafka_ssl_keyfile needs kafka_ssl_certfile")
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the given non-None overrides (flags win).

    A flag replaces its environment variable before validation, so a good flag
    repairs a bad variable.
    """
    if unknown := set(overrides) - set(Settings.model_fields):
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    update = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**update)  # type: ignore[arg-type]  # validated right here
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: its message names them
            raise ConfigError(f"invalid settings: {message}") from exc
        field = str(error["loc"][0])
        # A flag's own bounds are checked before (naming the flag): the rest came from
        # the flag's value as given, or from the variable.
        source = f"setting {field}" if field in update else variable(field)
        raise ConfigError(f"invalid {source}: {message}") from exc
    except SettingsError as exc:  # e.g. a list variable that is not JSON
        named = re.search(r'field "(\w+)"', str(exc))
        if named is None:
            raise ConfigError(f"invalid environment: {exc}") from exc
        raise ConfigError(
            f"invalid {variable(named.group(1))}: not valid JSON (lists and objects are"
            ' given as JSON, e.g. ["a", "b"])'
        ) from exc


def variable(field: str) -> str:
    """The environment variable of a setting."""
    return f"COLLECTOR_{field.upper()}"


def warn_unknown_variables(environ: Mapping[str, str]) -> None:
    """Warn about each COLLECTOR_ variable of ``environ`` that names no setting (a typo
    would otherwise be ignored in silence), by name. Called once logging is configured,
    so that the warning is rendered like every log line."""
    for unknown_name, suggestion in unknown_variables(environ):
        hint = f"; did you mean {suggestion}?" if suggestion else ""
        log.warning("unknown_variable", variable=unknown_name, hint=f"not a setting{hint}")


def unknown_variables(environ: Mapping[str, str]) -> Iterator[tuple[str, str | None]]:
    """Each COLLECTOR_ variable of ``environ`` that names nothing the collector reads,
    with the known variable it most resembles, if any."""
    known = {variable(field) for field in Settings.model_fields} | OTHER_VARIABLES
    for name in sorted(environ):
        if name.startswith("COLLECTOR_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            yield name, close[0] if close else None


@dataclass(frozen=True, slots=True)
class Effective:
    """One setting as it is in effect: its value (secrets masked) and where it came from."""

    name: str
    variable: str
    value: object
    source: Literal["environment", "default"]


def effective(settings: Settings) -> list[Effective]:
    """Every setting of ``settings``, secrets masked, and whether the environment or
    the default set it."""
    return [
        Effective(
            name,
            variable(name),
            _shown(getattr(settings, name)),
            "environment" if variable(name) in os.environ else "default",
        )
        for name in Settings.model_fields
    ]


def _shown(value: object) -> object:
    """``value`` as `config show` prints it (JSON): secrets masked, paths as text."""
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """``url`` with its password masked: in the authority (up to the last ``@``, so a
    password holding ``/``, ``?`` or ``#`` is masked whole) and in every query parameter
    whose name holds "password" (``password``, ``sslpassword``). Masks too much rather
    than too little."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    credentials, at, location = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:{MASK}@{location}"
    base, question, query = rest.partition("?")
    if question:
        pairs = (pair.partition("=") for pair in query.split("&"))
        query = "&".join(
            f"{key}={MASK}" if "password" in key.lower() else f"{key}{equals}{value}"
            for key, equals, value in pairs
        )
    return f"{scheme}://{base}{question}{query}"
