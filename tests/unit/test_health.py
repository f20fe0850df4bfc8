"""The probes the metrics listener answers: /healthz from the event loop, /readyz from
the readiness checks, /metrics without `_created` series, to GET and HEAD only; 404
elsewhere."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable

import pytest

from collector import health as health_module
from collector import metrics
from collector.errors import ConfigError
from collector.health import Health

Answer = tuple[str, dict[str, str], bytes]


def get(health: Health, path: str, method: str = "GET") -> Answer:
    """One GET (or another ``method``) of ``path`` through the listener's WSGI app."""
    answer: dict[str, object] = {}

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": ""}
    body: Iterable[bytes] = metrics._app(health)(environ, start_response)  # type: ignore[arg-type]
    return str(answer["status"]), answer["headers"], b"".join(body)  # type: ignore[return-value]


async def test_healthz_answers_while_the_loop_runs_and_not_when_it_is_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    health = Health(asyncio.get_running_loop())

    status, _, body = await asyncio.to_thread(get, health, "/healthz")
    assert (status, json.loads(body)) == ("200 OK", {"alive": True})

    monkeypatch.setattr(health_module, "PROBE_TIMEOUT_S", 0.2)

    answers: list[Answer] = []
    probe = threading.Thread(target=lambda: answers.append(get(health, "/healthz")))
    probe.start()
    time.sleep(0.5)  # noqa: ASYNC251  # the loop stuck for longer than the probe waits
    probe.join()
    [(status, _, body)] = answers
    assert (status, json.loads(body)) == ("503 Service Unavailable", {"alive": False})


async def test_readyz_is_ready_only_when_every_check_passes() -> None:
    health = Health(asyncio.get_running_loop())
    state = {"consumer": False}
    health.require("database", lambda: True)
    health.require("consumer", lambda: state["consumer"])

    status, _, body = await asyncio.to_thread(get, health, "/readyz")
    assert status == "503 Service Unavailable"
    assert json.loads(body) == {"ready": False, "checks": {"database": True, "consumer": False}}

    state["consumer"] = True
    status, _, body = await asyncio.to_thread(get, health, "/readyz")
    assert status == "200 OK"
    assert json.loads(body)["ready"] is True


async def test_metrics_only_at_metrics_and_without_created_series() -> None:
    health = Health(asyncio.get_running_loop())
    metrics.REMOVALS.labels("tag-removed").inc(0)

    status, headers, page = await asyncio.to_thread(get, health, "/metrics")
    missing, _, _ = await asyncio.to_thread(get, health, "/")

    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/plain")
    assert b"registry_gc_removals_total" in page
    assert b"_created" not in page
    assert missing == "404 Not Found"


PATHS = ["/metrics", "/healthz", "/readyz"]


@pytest.mark.parametrize("path", PATHS)
async def test_head_answers_the_status_and_headers_of_get_without_the_body(path: str) -> None:
    """HEAD is GET without the body: same status, same headers, the length the body
    would have (/metrics too, which prometheus_client alone refuses to HEAD)."""
    health = Health(asyncio.get_running_loop())
    health.require("database", lambda: False)

    status, headers, body = await asyncio.to_thread(get, health, path)
    head_status, head_headers, head_body = await asyncio.to_thread(get, health, path, "HEAD")

    assert head_status == status
    assert head_status != "405 Method Not Allowed"
    assert head_headers["Content-Type"] == headers["Content-Type"]
    assert int(head_headers["Content-Length"]) > 0
    if path != "/metrics":  # the same page: the same length (metrics may move between)
        assert head_headers == headers
        assert int(headers["Content-Length"]) == len(body)
    assert head_body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", PATHS)
async def test_other_methods_are_refused_with_405_and_the_allowed_ones(
    path: str, method: str
) -> None:
    """Any method but GET and HEAD gets 405 Method Not Allowed with an Allow header, and
    runs no check (a POST to /readyz must not count as a probe)."""
    probed: list[str] = []

    def database() -> bool:
        probed.append("database")
        return True

    health = Health(asyncio.get_running_loop())
    health.require("database", database)

    status, headers, _ = await asyncio.to_thread(get, health, path, method)

    assert status == "405 Method Not Allowed"
    assert headers["Allow"] == "GET, HEAD"
    assert probed == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_any_other_path_is_not_found_whatever_the_method(method: str) -> None:
    health = Health(asyncio.get_running_loop())
    for path in ("/", "/metrics/", "/ready", "/favicon.ico"):
        status, _, _ = await asyncio.to_thread(get, health, path, method)
        assert status == "404 Not Found", path


async def test_the_listener_answers_head_without_a_body_and_refuses_post() -> None:
    """Through a real HTTP listener: HEAD gets the headers and no body, POST a 405 that
    says what is allowed."""
    health = Health(asyncio.get_running_loop())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with metrics.served("127.0.0.1", port, health):
        head = await asyncio.to_thread(send, f"http://127.0.0.1:{port}/healthz", "HEAD")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(send, f"http://127.0.0.1:{port}/metrics", "POST")
    with refused.value:
        allowed = refused.value.headers["Allow"]

    assert head == (200, b"")
    assert (refused.value.code, allowed) == (405, "GET, HEAD")


def send(url: str, method: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=5) as response:
        body: bytes = response.read()
        return response.status, body


async def test_a_check_that_fails_or_a_closed_loop_means_not_ready() -> None:
    def broken() -> bool:
        raise LookupError("no such stage")

    health = Health(asyncio.get_running_loop())
    health.require("stages", broken)
    status, _, body = await asyncio.to_thread(get, health, "/readyz")
    assert (status, json.loads(body)) == (
        "503 Service Unavailable",
        {"ready": False, "checks": {"stages": False}},
    )

    closed = asyncio.new_event_loop()
    closed.close()
    gone = Health(closed)
    gone.require("database", lambda: True)
    assert dict(gone.readiness()) == {"database": False}
    assert gone.alive() is False


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_the_listener_serves_on_an_ipv4_or_ipv6_address(address: str) -> None:
    """The probes answer on the configured address, IPv6 included; a port already taken
    is a configuration error naming the address."""
    health = Health(asyncio.get_running_loop())
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as taken:
        taken.bind((address, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot serve metrics on"):
            async with metrics.served(address, port, health):
                pass
    host = f"[{address}]" if ":" in address else address
    async with metrics.served(address, port, health):
        body = await asyncio.to_thread(fetch, f"http://{host}:{port}/healthz")
    assert json.loads(body) == {"alive": True}


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: bytes = response.read()
        return text.decode()
