"""TLS and SASL (CONTRACT §4): the collector through a broker that demands them, on a
broker of this module's own with a SASL_SSL listener and a mutual-TLS one."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from collector.errors import BrokerUnavailable, ConfigError
from collector.kafka import ensure_topics
from collector.service import Service
from collector.sinks.blob_deleter import BlobDeleter
from collector.sinks.storage import FilesystemStorage
from tests.brokers import SpareBroker
from tests.pipeline import (
    Record,
    expired_repositories,
    pipeline_settings,
    produce,
    read_topic,
    request,
)
from tests.registry import FixedClock, Registry

PORT, CONTROLLER_PORT, SASL_SSL_PORT, SSL_PORT = 19192, 19193, 19194, 19195


class SecuredBroker(SpareBroker):
    def __init__(self, state: Path) -> None:
        self.password = secrets.token_urlsafe(16)  # made here: no secret in the repository
        super().__init__(
            state,
            PORT,
            CONTROLLER_PORT,
            {
                "COLLECTOR_KAFKA_SASL_SSL_PORT": str(SASL_SSL_PORT),
                "COLLECTOR_KAFKA_SSL_PORT": str(SSL_PORT),
                "COLLECTOR_KAFKA_SASL_PASSWORD": self.password,
            },
        )

    def sasl(self, mechanism: str, **overrides: Any) -> dict[str, Any]:
        """Settings for the SASL_SSL listener."""
        return {
            "kafka_bootstrap": f"127.0.0.1:{SASL_SSL_PORT}",
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": "collector",
            "kafka_sasl_password": self.password,
            "kafka_ssl_cafile": str(self.tls / "ca.pem"),
            **overrides,
        }

    def mutual_tls(self, **overrides: Any) -> dict[str, Any]:
        """Settings for the SSL listener, which wants a client certificate."""
        return {
            "kafka_bootstrap": f"127.0.0.1:{SSL_PORT}",
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": str(self.tls / "ca.pem"),
            "kafka_ssl_certfile": str(self.tls / "client.pem"),
            "kafka_ssl_keyfile": str(self.tls / "client.key"),
            **overrides,
        }


@pytest.fixture(scope="module")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SecuredBroker]:
    broker = SecuredBroker(tmp_path_factory.mktemp("secured"))
    await broker.up()
    try:
        yield broker
    finally:
        await broker.down()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_each_sasl_mechanism_gets_in(secured: SecuredBroker, mechanism: str) -> None:
    """Each mechanism the settings accept authenticates, over TLS checked against the CA."""
    settings = pipeline_settings(**secured.sasl(mechanism))

    created = await ensure_topics(settings, wait_s=5)

    assert sorted(created) == sorted(
        [settings.topic_requests, settings.topic_removals, settings.topic_dead_letter]
    )


@pytest.mark.parametrize("listener", ["SASL_SSL", "SSL"])
async def test_the_service_works_through_a_secured_listener(
    secured: SecuredBroker,
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    database_url: str,
    clock: FixedClock,
    listener: str,
    tmp_path: Path,
) -> None:
    """Requests in, removals out, bytes deleted, over SASL_SSL (SCRAM) or mutual TLS:
    every client of the service (admin, intake, dead letters, relay) and of the blob
    deleter connects with the settings."""
    security = secured.sasl("SCRAM-SHA-512") if listener == "SASL_SSL" else secured.mutual_tls()
    settings = pipeline_settings(database_url, sink_group_id=f"test.sink.{listener}", **security)
    sweeps = await expired_repositories(registry, 3, layered=True)
    storage = FilesystemStorage(tmp_path)
    files = [storage.path(row["digest"]) for row in await db.fetch("SELECT digest FROM blob")]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"layer")
    await ensure_topics(settings, wait_s=5)
    await produce(
        settings.topic_requests,
        [*map(request, sweeps), Record(b"acme/repo0", b"{not json")],
        via=settings,
    )

    service = Service(settings, exit_when_idle_s=0.5, clock=clock)
    summary = await asyncio.wait_for(service.run(), 60)
    deleter = BlobDeleter(settings, storage, exit_when_idle=1.0)
    await asyncio.wait_for(deleter.run(), 60)

    assert summary.outcomes == {"collected": 3}
    removals = await read_topic(settings.topic_removals, via=settings)
    outbox = {str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM gc.outbox")}
    assert len(outbox) == 3 * 3  # a tag, a manifest and a blob per repository
    assert len(files) == 3
    assert not [path for path in files if path.exists()]
    assert {r.event["id"] for r in removals} == outbox
    [letter] = await read_topic(settings.topic_dead_letter, partitions=1, via=settings)
    assert letter.event["data"]["reason"] == "malformed-json"


@pytest.mark.parametrize(
    ("security", "refusal"),
    [
        (
            lambda b: b.sasl("SCRAM-SHA-256", kafka_sasl_password="wrong"),
            "SaslAuthenticationFailed",
        ),
        (lambda b: b.sasl("PLAIN", kafka_sasl_password="wrong"), "SaslAuthenticationFailed"),
        (lambda b: b.sasl("PLAIN", kafka_ssl_cafile=None), "CERTIFICATE_VERIFY_FAILED"),
    ],
    ids=["wrong SCRAM password", "wrong PLAIN password", "broker certificate not trusted"],
)
async def test_a_broker_that_refuses_the_client_is_a_configuration_error_at_once(
    secured: SecuredBroker, security: Any, refusal: str
) -> None:
    """Waiting would not change credentials or certificates: no retries, a ConfigError
    naming the broker's reason (aiokafka itself only says it could not bootstrap)."""
    settings = pipeline_settings(**security(secured))

    with structlog.testing.capture_logs() as logs, pytest.raises(ConfigError) as refused:
        await ensure_topics(settings, wait_s=30)

    assert refusal in str(refused.value)
    assert "broker_unreachable" not in [entry["event"] for entry in logs]


async def test_a_listener_that_hangs_up_is_retried_then_named(secured: SecuredBroker) -> None:
    """The mutual-TLS listener closes a connection without a client certificate, which
    looks like an outage: retried for the wait, then the last cause is in the error."""
    settings = pipeline_settings(
        **secured.mutual_tls(kafka_ssl_certfile=None, kafka_ssl_keyfile=None)
    )

    with structlog.testing.capture_logs() as logs, pytest.raises(BrokerUnavailable) as gone:
        await ensure_topics(settings, wait_s=1)

    assert f"Connection at 127.0.0.1:{SSL_PORT} closed" in str(gone.value)
    assert "broker_unreachable" in [entry["event"] for entry in logs]


async def test_the_command_line_says_why_in_one_line(
    secured: SecuredBroker, database_url: str
) -> None:
    """`collector migrate` with a wrong password: exit 2, one line, the broker's reason."""
    security = secured.sasl("SCRAM-SHA-512", kafka_sasl_password="wrong")
    env = {
        **os.environ,
        **{f"COLLECTOR_{name.upper()}": value for name, value in security.items()},
        "COLLECTOR_DATABASE_URL": database_url,
        "COLLECTOR_LOG_LEVEL": "warning",
    }

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "migrate", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 2
    errors = [line for line in stderr.decode().splitlines() if line.startswith("collector: error")]
    assert errors == [
        "collector: error: the Kafka broker refused us: [Error 58] SaslAuthenticationFailed:"
        " Authentication failed during authentication due to invalid credentials with SASL"
        " mechanism SCRAM-SHA-512"
    ], stderr.decode()
