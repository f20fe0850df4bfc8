"""A PostgreSQL server of a test's own beside the shared one, from the same Debian
binaries, that the test may restart, stop and crash without harming any other test."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg


def _binaries() -> Path:
    """The newest server Debian installed (scripts/services installs it)."""
    return max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))


class SparePostgres:
    """A cluster in ``directory`` listening on 127.0.0.1:``port`` only, trust auth. As
    root the server runs as the ``postgres`` user, which PostgreSQL requires."""

    def __init__(self, directory: Path, port: int) -> None:
        self.port = port
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._data = directory / "data"
        self._log = directory / "server.log"
        self._directory = directory

    def url(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    async def _run(self, *command: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        process = await asyncio.create_subprocess_exec(
            *as_user,
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 240)  # beyond pg_ctl -t
        assert process.returncode == 0, f"{command[0]} failed: {output.decode()}"

    async def _ctl(self, *args: str) -> None:
        await self._run(
            str(_binaries() / "pg_ctl"), "-D", str(self._data), "-w", "-t", "180", *args
        )

    async def up(self) -> None:
        """Create the cluster (once) and start it."""
        self._directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self._directory, "postgres", "postgres")
        if not (self._data / "PG_VERSION").exists():
            await self._run(
                str(_binaries() / "initdb"), "-D", str(self._data), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
        await self.start()

    async def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        await self._ctl("-l", str(self._log), "-o", options, "start")

    async def restart(self) -> None:
        """A clean restart: every session ends, the server is back within seconds."""
        # The server started here must not hold our pipe open: its output goes to the log.
        await self._ctl("-l", str(self._log), "-m", "fast", "restart")

    async def stop(self) -> None:
        await self._ctl("-m", "fast", "stop")

    async def crash(self) -> None:
        """Stop as a crash does: no shutdown checkpoint; the next start recovers from WAL."""
        await self._ctl("-m", "immediate", "stop")

    async def down(self) -> None:
        if (self._data / "postmaster.pid").exists():
            await self.stop()

    async def execute(self, *statements: str) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
