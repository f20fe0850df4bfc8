"""Kafka plumbing shared by every client the collector runs: options and topics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context

from collector.backoff import reach
from collector.config import Settings
from collector.errors import BrokerUnavailable, CollectorError

log = structlog.get_logger(__name__)

#: Largest dead letter: a refused 1 MiB value, base64 encoded, in its envelope.
#: The dead-letter topic is created to accept it (the broker default is 1 MB).
DEAD_LETTER_MAX_BYTES = 8 * 1024 * 1024


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options for any aiokafka client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


async def reach_broker(start: Callable[[], Awaitable[None]], *, wait_s: float) -> None:
    """``start()`` a client, retrying with backoff while the broker is unreachable, for up
    to ``wait_s`` seconds; then BrokerUnavailable."""
    await reach(
        start,
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
        missing = sorted(set(wanted) - set(await admin.list_topics()))
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
            created = []
            for topic, code, *message in response.topic_errors:
                if code == 0:
                    created.append(topic)
                elif code != TopicAlreadyExistsError.errno:  # a concurrent migrate won
                    error = for_code(code).__name__
                    detail = f" ({message[0]})" if message and message[0] else ""
                    raise CollectorError(f"cannot create topic {topic}: {error}{detail}")
            log.info("topics_created", topics=sorted(created))
            return sorted(created)
        return []
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()
