"""Kafka plumbing shared by every client the collector runs: options, topics, and the
edge where aiokafka's errors become ours (:func:`translated`)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
    for_code,
)
from aiokafka.helpers import create_ssl_context

from collector.backoff import Outage, close_quietly, reach
from collector.config import Settings
from collector.errors import BrokerUnavailable, CollectorError, ConfigError, RecordTooLarge

log = structlog.get_logger(__name__)

#: Largest dead letter: a refused 1 MiB value, base64 encoded, in its envelope.
#: The dead-letter topic is created to accept it (the broker default is 1 MB).
DEAD_LETTER_MAX_BYTES = 8 * 1024 * 1024


#: Broker errors that a later attempt (with a fresh client) may not meet again, besides
#: those aiokafka marks retriable.
_TRANSIENT = (
    KafkaConnectionError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
)


@contextmanager
def translated(doing: str) -> Iterator[None]:
    """aiokafka's errors raised inside, as ours: a broker away (or a request that timed
    out) is :class:`BrokerUnavailable`, which is retriable; a record larger than the
    broker takes is :class:`RecordTooLarge`; any other is a :class:`CollectorError`
    saying what we were ``doing`` (publish to X, consume X)."""
    try:
        yield
    except MessageSizeTooLargeError as exc:
        raise RecordTooLarge(f"cannot {doing}: {exc}") from exc
    except KafkaError as exc:
        if exc.retriable or isinstance(exc, _TRANSIENT):
            raise BrokerUnavailable(f"cannot {doing}: {exc!r}") from exc
        raise CollectorError(f"cannot {doing}: {exc!r}") from exc


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options for any aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        try:
            options["ssl_context"] = create_ssl_context(
                cafile=settings.kafka_ssl_cafile,
                certfile=settings.kafka_ssl_certfile,
                keyfile=settings.kafka_ssl_keyfile,
            )
        except (OSError, ssl.SSLError) as exc:  # a missing file, or not PEM
            raise ConfigError(f"cannot use the Kafka TLS files: {exc}") from exc
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer that loses nothing: idempotent, acknowledged by every in-sync replica.
    ``kafka_produce_timeout_s`` bounds its requests and metadata waits, and how long a
    batch may wait for its partition's leader (see :func:`acknowledged`)."""
    made = AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=int(settings.kafka_produce_timeout_s * 1000),
        **client_options(settings),
        **options,
    )
    _back_off_failed_metadata_updates(made.client)
    return made


#: A record to send: key, value, headers.
Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


async def send_all(settings: Settings, topic: str, records: Sequence[Record]) -> list[Any]:
    """Send ``records`` in order through a producer of their own, for a command that
    must know they arrived; return their aiokafka RecordMetadata once the broker
    acknowledged every one, or raise BrokerUnavailable saying why not."""
    made = producer(settings)
    try:
        with translated(f"publish to {topic}"):
            await reach_broker(made.start, wait_s=settings.connect_wait_s)
            deliveries = [
                await made.send(topic, value, key=key, headers=headers)
                for key, value, headers in records
            ]
            # The idempotent producer would retry an unacknowledged send forever.
            async with asyncio.timeout(settings.kafka_produce_timeout_s):
                return list(await asyncio.gather(*deliveries))
    except TimeoutError as exc:
        raise BrokerUnavailable(
            f"the broker did not acknowledge the records sent to {topic}"
            f" within {settings.kafka_produce_timeout_s:g} s"
        ) from exc
    finally:
        await close_quietly(made.stop(), "producer")  # flushes what is unsent


def _back_off_failed_metadata_updates(client: Any) -> None:
    """Contain an aiokafka 0.14 busy loop: a broker shut down cleanly while sends are in
    flight leaves partitions without a leader, and the sender then asks for metadata
    again the moment an update fails (refused at once while the broker is away): a
    core at 100% and thousands of log lines a second until the batches expire. A failed
    update now waits ``retry_backoff_ms``, as the sender's own comment intends."""
    update = client._metadata_update

    async def backing_off(*args: Any) -> bool:
        updated: bool = await update(*args)
        if not updated:
            await asyncio.sleep(client._retry_backoff)
        return updated

    client._metadata_update = backing_off


async def acknowledged(
    deliveries: Sequence[asyncio.Future[Any]], *, settings: Settings, broker: Outage
) -> None:
    """Wait until the broker acknowledged every delivery; raise the first one's error.

    An idempotent producer retries a batch, so a broker outage is mostly a
    delivery that takes long: past ``kafka_produce_timeout_s`` it is logged
    (once, through ``broker``) and the wait goes on. A batch can still fail
    (aiokafka gives up on one whose partition had no known leader for that
    long), and that error is raised here: the caller sends those events again
    later, with the same ids, so an outage can put an event on the topic twice.
    """
    patience_s = settings.kafka_produce_timeout_s
    pending: set[asyncio.Future[Any]] = set(deliveries)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=patience_s)
        if pending:
            broker.failed(
                KafkaTimeoutError(f"{len(pending)} event(s) not acknowledged in {patience_s} s")
            )
    for delivery in deliveries:
        if (error := delivery.exception()) is not None:
            raise error


#: Why a broker turned a client away that waiting will not change: credentials,
#: mechanism, certificates. These are configuration errors.
_REFUSALS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    ssl.SSLCertVerificationError,
)


class _BootstrapFailures(logging.Filter):
    """aiokafka logs why each bootstrap connection failed, then raises a bare "Unable to
    bootstrap": this keeps the last why."""

    def __init__(self) -> None:
        super().__init__()
        self.last: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        cause = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        if isinstance(cause, BaseException):
            self.last = cause
        return True


@contextmanager
def _bootstrap_failures() -> Iterator[_BootstrapFailures]:
    logger = logging.getLogger("aiokafka")  # where aiokafka's client logs
    failures = _BootstrapFailures()
    logger.addFilter(failures)
    try:
        yield failures
    finally:
        logger.removeFilter(failures)


async def reach_broker(start: Callable[[], Awaitable[None]], *, wait_s: float) -> None:
    """``start()`` a client, retrying with backoff while the broker is unreachable, for up
    to ``wait_s`` seconds; then BrokerUnavailable. A broker that refuses the client's
    credentials or certificates is a ConfigError at once."""

    async def start_or_refuse() -> None:
        with _bootstrap_failures() as failures:
            try:
                await start()
            except KafkaConnectionError as exc:
                if isinstance(failures.last, _REFUSALS):
                    raise ConfigError(f"the Kafka broker refused us: {failures.last}") from exc
                if failures.last is None:
                    raise
                raise KafkaConnectionError(
                    f"no bootstrap server answered: {failures.last}"
                ) from exc

    await reach(
        start_or_refuse,
        errors=(KafkaConnectionError,),
        wait_s=wait_s,
        unavailable=lambda reason: BrokerUnavailable(f"cannot reach the Kafka broker: {reason}"),
        event="broker_unreachable",
    )


async def ensure_topics(settings: Settings, *, wait_s: float = 30.0) -> list[str]:
    """Create the collector's topics that are missing; return the names created."""
    wanted = {
        settings.topic_requests: settings.topic_partitions,
        settings.topic_removals: settings.topic_partitions,
        # An operator's inbox, read in order: one partition is plenty.
        settings.topic_dead_letter: 1,
    }
    admin = AIOKafkaAdminClient(**client_options(settings))
    await reach_broker(admin.start, wait_s=wait_s)
    try:
        with translated("create topics"):
            missing = sorted(set(wanted) - set(await admin.list_topics()))
            created: list[str] = []
            if missing:
                factor = settings.topic_replication_factor
                # aiokafka accepts the broker-default factor (-1) only with an
                # explicit, empty replica assignment.
                assignments: dict[int, list[int]] | None = {} if factor == -1 else None
                configs = {
                    settings.topic_dead_letter: {"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}
                }
                response = await admin.create_topics(
                    [
                        NewTopic(name, wanted[name], factor, assignments, configs.get(name))
                        for name in missing
                    ]
                )
                # The broker answers per topic, and aiokafka raises for none of them.
                for topic, code, *message in response.topic_errors:
                    if code == 0:
                        created.append(topic)
                    elif code != TopicAlreadyExistsError.errno:  # a concurrent migrate won
                        error = for_code(code).__name__
                        detail = f" ({message[0]})" if message and message[0] else ""
                        raise CollectorError(f"cannot create topic {topic}: {error}{detail}")
                log.info("topics_created", topics=sorted(created))
            if settings.topic_dead_letter not in missing:
                await _check_dead_letter_limit(admin, settings.topic_dead_letter)
            return sorted(created)
    finally:
        await admin.close()


async def _check_dead_letter_limit(admin: AIOKafkaAdminClient, topic: str) -> None:
    """Warn about a dead-letter topic made by hand or by an older collector with a
    smaller message size: letters over it go without the refused value. Left as the
    operator set it (aiokafka has no incremental config change to raise it safely)."""
    wanted = "max.message.bytes"
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {wanted: None})]
        )
    except KafkaError as exc:  # not allowed to look, say: a hint is not worth failing for
        log.info("dead_letter_topic_unchecked", topic=topic, error=repr(exc))
        return
    for *_, entries in response.resources:
        for name, value, *_ in entries:
            if name == wanted and int(value) < DEAD_LETTER_MAX_BYTES:
                log.warning(
                    "dead_letter_topic_limited",
                    topic=topic,
                    max_message_bytes=int(value),
                    advice=(
                        f"refused values over about {int(value) * 3 // 4} bytes are"
                        f" dead-lettered without the value; to keep them, run"
                        f" kafka-configs.sh --alter --entity-type topics --entity-name"
                        f" {topic} --add-config {wanted}={DEAD_LETTER_MAX_BYTES}"
                    ),
                )
