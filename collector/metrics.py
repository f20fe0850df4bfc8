"""Prometheus metrics of `collector run` and `collector sink blob-deleter`: one at every
decision they make.

Served at ``http://<COLLECTOR_METRICS_ADDRESS>:<COLLECTOR_METRICS_PORT>/metrics``
(127.0.0.1 unless told otherwise) when a port is configured, beside the health
probes ``/healthz`` and ``/readyz`` (:mod:`collector.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from collector.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from collector.health import Health

# A counter's `_created` series doubles every series and tells an operator nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client 0.26

REQUESTS_RECEIVED = Counter(
    "registry_gc_requests_received",
    "Records read from the requests topic, by verdict (accepted, duplicate, refused).",
    ["verdict"],
)
DEAD_LETTERS = Counter(
    "registry_gc_dead_letters",
    "Refused records published to the dead-letter topic, by reason.",
    ["reason"],
)
REQUESTS_DUE = Gauge(
    "registry_gc_requests_due", "Requests due and waiting for a worker (the intake's backlog)."
)
INTAKE_PAUSED = Gauge(
    "registry_gc_intake_paused", "1 while the intake pauses the topic for backpressure."
)
REQUESTS_FINISHED = Counter(
    "registry_gc_requests_finished",
    "Requests a worker finished, by type and outcome (collected, purged, stale, ...).",
    ["type", "outcome"],
)
REQUESTS_DEFERRED = Counter(
    "registry_gc_requests_deferred",
    "Requests put off to a later time (a tag inside its window, locked rows), by type.",
    ["type"],
)
REQUEST_SECONDS = Histogram(
    "registry_gc_request_duration_seconds",
    "Time a worker spent on a request, by type.",
    ["type"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
#: Seconds to weeks: a tag-expired request is sent when the tag ends, and collected
#: once past its namespace's window (14 days unless the namespace says otherwise).
_DAY_S = 86_400
RECLAIM_BUCKETS = (
    *(1, 5, 15, 60, 300, 900, 3600, 4 * 3600),
    *(_DAY_S, 7 * _DAY_S, 14 * _DAY_S, 15 * _DAY_S, 30 * _DAY_S, 90 * _DAY_S),
)
RECLAIMED_SECONDS = Histogram(
    "registry_gc_request_reclaimed_seconds",
    "Seconds from a request's time (its CloudEvents time) to its deletions committed, by"
    " type: observed once per request, when a worker finishes it, whatever the outcome,"
    " with removals committed under its id (in practice collected and purged; stale or"
    " gone when an earlier run of it was cut short after removing, failed when some"
    " removals committed before the failure); a request that removed nothing is not"
    " observed. A tag-expired request's time is when its tag ended: the namespace's"
    " time-machine window is included. A time ahead of the collector's clock counts 0.",
    ["type"],
    buckets=RECLAIM_BUCKETS,
)
PUBLISHED_SECONDS = Histogram(
    "registry_gc_request_published_seconds",
    "Seconds from a request's time to the publication of the last of its removal events"
    " (acknowledged by the broker), by type: observed once for each request"
    " registry_gc_request_reclaimed_seconds observes, by the publishing relay once none"
    " of its events waits (events set aside as undeliverable do not wait; a request"
    " none of whose events could be published is not observed).",
    ["type"],
    buckets=RECLAIM_BUCKETS,
)
REMOVALS = Counter(
    "registry_gc_removals",
    "Objects removed (committed deletions), by removal event type without its"
    " `registry.gc.` prefix (tag-removed, blob-removed, ...), as every `type` label here.",
    ["type"],
)
EVENTS_PUBLISHED = Counter(
    "registry_gc_events_published",
    "Removal events the broker acknowledged and the relay marked published.",
)
EVENTS_UNDELIVERABLE = Counter(
    "registry_gc_events_undeliverable",
    "Removal events larger than the broker takes, set aside in gc.outbox (column"
    " undeliverable) instead of published.",
)
OUTBOX_PENDING = Gauge(
    "registry_gc_outbox_pending",
    "Removal events committed and not yet acknowledged by the broker: counted every 15 s by"
    " every service process, and by the publishing relay after a batch of a backlog.",
)
BLOBS_SETTLED = Counter(
    "registry_gc_blob_deleter_blobs",
    "Blob-removed events the blob deleter settled, by outcome: deleted, already_gone"
    " (a deleter deleted the file before), missing (gone, never deleted by a deleter),"
    " repushed (the digest was pushed again: bytes kept).",
    ["outcome"],
)
BYTES_FREED = Counter(
    "registry_gc_blob_deleter_freed_bytes",
    "Bytes of the blob files the blob deleter deleted, as their blob-removed events size them.",
)
RECORDS_SKIPPED = Counter(
    "registry_gc_blob_deleter_records_skipped",
    "Records of the removals topic the blob deleter skipped, by reason: duplicate,"
    " other_event (not blob-removed), invalid.",
    ["reason"],
)
OUTBOX_OLDEST_AGE = Gauge(
    "registry_gc_outbox_oldest_age_seconds",
    "How long the oldest removal event not yet acknowledged by the broker has waited (0"
    " when none), looked at as registry_gc_outbox_pending is counted.",
)
REMOVED_BYTES = Counter(
    "registry_gc_removed_bytes",
    "Bytes of the objects whose removal committed, by removal event type without its"
    " prefix (blob-removed: their size; what the blob deleter may free).",
    ["type"],
)
CONSUMER_LAG = Gauge(
    "registry_gc_consumer_lag",
    "Records of a partition this process consumes that its group has not committed yet"
    " (the partition's end offset minus the committed one), by topic and partition.",
    ["topic", "partition"],
)
CANDIDATES = Gauge(
    "registry_gc_candidates",
    "Objects queued in gc.candidate and not decided yet, by kind (manifest, label, image,"
    " blob), as the service last counted them.",
    ["kind"],
)
CANDIDATE_OLDEST_AGE = Gauge(
    "registry_gc_candidate_oldest_age_seconds",
    "How long the oldest undecided candidate of each kind has waited (0 when none).",
    ["kind"],
)
OUTAGES = Counter(
    "registry_gc_outages",
    "Outages of a dependency (database, broker, storage) that a stage met, counted when"
    " each begins: the errors an operator looks for, in `collector run` and in the blob"
    " deleter; registry_gc_unavailable says which last now.",
    ["dependency"],
)
UNAVAILABLE = Gauge(
    "registry_gc_unavailable",
    "Stages that find a dependency unavailable right now, by dependency (database,"
    " broker, storage); above 0 means an outage is being waited out.",
    ["dependency"],
)


@contextlib.asynccontextmanager
async def served(address: str, port: int | None, health: Health) -> AsyncIterator[None]:
    """Serve /metrics, /healthz and /readyz in a background thread while the block runs
    (nothing without a port); a port that cannot be bound is a configuration error."""
    if port is None:
        yield
        return
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        server = make_server(address, port, _app(health), _server_class(address, port), _Quiet)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {shown}: {exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        await asyncio.to_thread(server.shutdown)  # it polls: off the event loop
        server.server_close()
        thread.join()


def _server_class(address: str, port: int) -> type[ThreadingWSGIServer]:
    """The threading WSGI server for ``address``'s family (an IPv6 address needs one)."""
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve metrics on {address}: {exc}") from exc
    return type("Server", (ThreadingWSGIServer,), {"address_family": family})


#: What the listener answers: a page (GET), or its status and headers alone (HEAD).
_METHODS = ("GET", "HEAD")
_PATHS = ("/metrics", "/healthz", "/readyz")

#: A page: status, headers, body.
_Page = tuple[str, list[tuple[str, str]], bytes]


def _app(health: Health) -> Callable[[WSGIEnvironment, StartResponse], Iterable[bytes]]:
    exposition = make_wsgi_app()

    def page(environ: WSGIEnvironment, path: str) -> _Page:
        if path == "/metrics":
            answered: list[tuple[str, list[tuple[str, str]]]] = []

            def start(
                status: str, headers: list[tuple[str, str]], exc_info: object = None
            ) -> Callable[[bytes], object]:
                answered.append((status, headers))
                return lambda _: None  # the exposition returns its body, never writes

            # prometheus_client refuses HEAD: ask for the page, the caller drops its body.
            body = b"".join(exposition({**environ, "REQUEST_METHOD": "GET"}, start))
            [(status, headers)] = answered
            return status, headers, body
        if path == "/healthz":
            alive = health.alive()
            return _json(alive, {"alive": alive})
        checks = dict(health.readiness())
        ready = all(checks.values())
        return _json(ready, {"ready": ready, "checks": checks})

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path not in _PATHS:
            answer: _Page = (
                "404 Not Found",
                [("Content-Type", "text/plain")],
                b"not found: /metrics, /healthz, /readyz\n",
            )
        elif method not in _METHODS:
            answer = (
                "405 Method Not Allowed",
                [("Allow", ", ".join(_METHODS)), ("Content-Type", "text/plain")],
                f"{path} answers {' and '.join(_METHODS)} only\n".encode(),
            )
        else:
            answer = page(environ, path)
        status, headers, body = answer
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if method == "HEAD" else [body]

    return app


def _json(ok: bool, body: dict[str, Any]) -> _Page:
    return (
        "200 OK" if ok else "503 Service Unavailable",
        [("Content-Type", "application/json")],
        json.dumps(body).encode() + b"\n",
    )


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds are not news: no access log on stderr."""
