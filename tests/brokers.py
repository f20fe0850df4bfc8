"""Brokers of a test's own beside the shared one, started and stopped by
``scripts/services`` from the shared jars, with their own ports and data."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "services"


class SpareBroker:
    """A single-node broker whose PLAINTEXT listener is on ``port``; ``env`` adds
    scripts/services settings (secured listeners, say)."""

    def __init__(
        self, state: Path, port: int, controller_port: int, env: Mapping[str, str] = {}
    ) -> None:
        self.bootstrap = f"127.0.0.1:{port}"
        #: The certificates scripts/services makes for secured listeners.
        self.tls = state / "kafka" / "tls"
        self._env = {
            **os.environ,
            "COLLECTOR_SERVICES_DIR": str(state),
            "COLLECTOR_KAFKA_PORT": str(port),
            "COLLECTOR_KAFKA_CONTROLLER_PORT": str(controller_port),
            **env,
        }

    async def _services(self, command: str) -> None:
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), command, env=self._env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()

    async def up(self) -> None:
        await self._services("kafka-up")

    async def down(self) -> None:
        await self._services("kafka-down")


@asynccontextmanager
async def running_broker(
    state: Path, port: int, controller_port: int
) -> AsyncIterator[SpareBroker]:
    """A spare broker, up for the block and down after it."""
    broker = SpareBroker(state, port, controller_port)
    await broker.up()
    try:
        yield broker
    finally:
        await broker.down()
