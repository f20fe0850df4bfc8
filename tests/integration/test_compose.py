"""docker-compose.yml describes the services scripts/services runs (no Docker engine
here to start it, so its settings are compared with the running ones)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parents[2]
#: Where the two differ on purpose: the container listens on every interface of
#: its own network, and keeps its data in a volume.
CONTAINER_ONLY = {"listeners", "log.dirs"}


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def shared_broker_properties() -> dict[str, str]:
    """The server.properties scripts/services wrote for the broker the tests use."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "registry-gc"
    state = Path(os.environ.get("COLLECTOR_SERVICES_DIR", cache))
    lines = (state / "kafka" / "server.properties").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_kafka_service_is_the_broker_scripts_services_runs() -> None:
    kafka = compose()["kafka"]
    environment = kafka["environment"]
    heap = environment.pop("KAFKA_HEAP_OPTS")
    in_compose = {
        name.removeprefix("KAFKA_").lower().replace("_", "."): value
        for name, value in environment.items()
    }
    local = shared_broker_properties()

    assert {k: v for k, v in in_compose.items() if k not in CONTAINER_ONLY} == {
        k: v for k, v in local.items() if k not in CONTAINER_ONLY
    }
    assert in_compose["listeners"].replace("0.0.0.0", "127.0.0.1") == local["listeners"]
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>(.+)</kafka.version>", pom)
    assert version is not None
    assert kafka["image"] == f"apache/kafka:{version[1]}"
    assert heap in (ROOT / "scripts" / "services").read_text()


async def test_the_postgres_service_is_the_database_scripts_services_runs(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    postgres = compose()["postgres"]
    major = int(await db.fetchval("SHOW server_version_num")) // 10_000
    settings = dict(
        argument.split("=", 1)
        for flag, argument in zip(postgres["command"][1::2], postgres["command"][2::2], strict=True)
        if flag == "-c"
    )

    assert postgres["image"] == f"postgres:{major}"
    assert postgres["environment"]["POSTGRES_DB"] == "registry"
    assert postgres["ports"] == ["127.0.0.1:5432:5432"]
    for name, value in settings.items():
        assert await db.fetchval("SELECT current_setting($1)", name) == value
