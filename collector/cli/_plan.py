"""What `collector plan` does (its flags are in :mod:`collector.cli.registry`): plan in one
read-only snapshot, then show it as tables for people or one JSON object for scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from rich.table import Table

from collector.cli._output import json_line, tables
from collector.cli._settings import configured
from collector.clock import SystemClock, ms_to_datetime
from collector.db.connector import PoolDatabase, create_pool
from collector.engine import repositories as repository_rows
from collector.engine.plan import Due, Plan, PlanScope, Share, plan
from collector.errors import ConfigError

#: How a repository-less share is shown: labels and blobs queued registry-wide.
REGISTRY_WIDE = "(registry-wide)"

#: A repository id (None: registry-wide) to the name a share is grouped under.
Naming = Callable[[int | None], str]


def run(
    paths: list[str],
    *,
    namespace: str | None,
    horizon_s: int,
    top: int,
    as_json: bool,
    database_url: str | None,
    log_level: str | None,
    purge: bool = True,
    purge_named: bool = False,
) -> None:
    """Plan for the repositories at ``paths``, or of ``namespace``, or (neither) the whole
    registry; marked ones count as purged when ``purge``. With ``purge_named`` (`collect
    --purge NS/REPO… --dry-run --summary`), each named repository must be marked."""
    if paths and namespace is not None:
        raise ConfigError("give NAMESPACE/REPOSITORY arguments or --namespace, not both")
    settings = configured(log_level=log_level, database_url=database_url)

    async def main() -> Plan:
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            async with PoolDatabase(pool).connection() as conn:
                named = [await repository_rows.find(conn, path) for path in paths]
                if purge_named:
                    repository_rows.require_marked(named)
                if namespace is not None:
                    await repository_rows.require_namespace(conn, namespace)
                scope = PlanScope(
                    namespace=namespace,
                    repository_ids=tuple(r.id for r in named) if named else None,
                    purge=purge,
                )
                return await plan(
                    conn,
                    scope,
                    now_ms=SystemClock().now_ms(),
                    horizon_s=horizon_s,
                    protected_digests=settings.protected_digests,
                    top=top,
                )
        finally:
            await pool.close()

    result = asyncio.run(main())
    if as_json:
        json_line(as_dict(result, top))
    else:
        show(result, top)


def as_dict(result: Plan, top: int) -> dict[str, Any]:
    """The plan as JSON values: counts by removal event type, bytes, shares by repository
    and namespace (largest first), the largest blobs, the oldest due item, what is kept."""
    oldest = result.oldest_due
    return {
        "at": _iso(result.at_ms),
        "horizon_s": result.horizon_s,
        "now": _due(result.now),
        "by_horizon": _due(result.by_horizon),
        "repositories": [
            {"repository": name, "now": vars(now), "by_horizon": vars(later)}
            for name, now, later in _shares(result, _path(result))[:top]
        ],
        "namespaces": [
            {"namespace": name, "now": vars(now), "by_horizon": vars(later)}
            for name, now, later in _shares(result, _namespace(result))[:top]
        ],
        "largest": [
            {"digest": b.digest, "size": b.size, "repository": _path(result)(b.repository_id)}
            for b in result.largest
        ],
        "oldest_due": None
        if oldest is None
        else {
            "kind": oldest.kind,
            "name": oldest.name,
            "repository": _path(result)(oldest.repository_id),
            "due_at": _iso(oldest.due_at_ms),
            "overdue_s": (result.at_ms - oldest.due_at_ms) // 1000,
        },
        "protected": {
            "immutable_tags": result.protected.immutable_tags,
            "immutable_examples": [
                {"tag": name, "repository": _path(result)(repository_id)}
                for name, repository_id in result.protected.immutable_examples
            ],
            "blobs": [
                {
                    "digest": b.digest,
                    "size": b.size,
                    "reason": "protected digest" if b.protected else "placeholder",
                }
                for b in result.protected.blobs
            ],
        },
    }


def show(result: Plan, top: int) -> None:
    console = tables()
    horizon = _duration(result.horizon_s)
    console.print(
        f"plan at {_iso(result.at_ms)}: read from one snapshot, nothing changed or locked"
    )
    dues = [result.now, result.by_horizon] if result.horizon_s else [result.now]
    totals = Table(title="what a collection would remove", title_justify="left")
    totals.add_column("kind")
    for column in ("due now", f"due within {horizon}")[: len(dues)]:
        totals.add_column(column, justify="right")
    for kind in sorted(set().union(*(due.removed for due in dues))):
        totals.add_row(
            kind.removeprefix("registry.gc."), *(f"{due.removed[kind]:,}" for due in dues)
        )
    totals.add_row("uploads (no event)", *(f"{due.uploads:,}" for due in dues))
    totals.add_row("bytes freed", *(_bytes(due.bytes) for due in dues), style="bold")
    console.print(totals)
    for title, key in (("namespace", _namespace(result)), ("repository", _path(result))):
        shares = _shares(result, key)
        if not shares:
            continue
        table = Table(title=f"by {title}, most bytes first", title_justify="left")
        table.add_column(title)
        columns = ("objects now", "bytes now", f"objects ≤{horizon}", f"bytes ≤{horizon}")
        for column in columns[: 2 * len(dues)]:
            table.add_column(column, justify="right")
        for name, *shares_of in shares[:top]:
            cells = [(f"{s.objects:,}", _bytes(s.bytes)) for s in shares_of[: len(dues)]]
            table.add_row(name, *(cell for pair in cells for cell in pair))
        if len(shares) > top:
            table.caption = f"{len(shares) - top:,} more (--top)"
        console.print(table)
    if result.largest:
        table = Table(title="largest blobs due now", title_justify="left")
        for column in ("digest", "size", "freed by"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for blob in result.largest:
            table.add_row(blob.digest, _bytes(blob.size or 0), _path(result)(blob.repository_id))
        console.print(table)
    if (oldest := result.oldest_due) is not None:
        console.print(
            f"oldest due: {oldest.kind.replace('_', ' ')} {oldest.name}"
            f" of {_path(result)(oldest.repository_id)}, due since {_iso(oldest.due_at_ms)}"
        )
    protected = result.protected
    if protected.immutable_tags:
        examples = ", ".join(
            f"{_path(result)(repository_id)}:{name}"
            for name, repository_id in protected.immutable_examples
        )
        console.print(
            f"kept: {protected.immutable_tags:,} immutable tag(s) past their window ({examples})"
        )
    for is_protected, what in (
        (False, "placeholder blob(s), no placement"),
        (True, "protected digest(s)"),
    ):
        kept = [b for b in protected.blobs if b.protected is is_protected]
        if kept:
            size = sum(b.size or 0 for b in kept)
            console.print(f"kept: {len(kept):,} {what}, {_bytes(size)} nothing else holds")


def _due(due: Due) -> dict[str, Any]:
    return {
        "removed": dict(sorted(due.removed.items())),
        "objects": due.total,
        "bytes": due.bytes,
        "uploads": due.uploads,
    }


def _shares(result: Plan, key: Naming) -> list[tuple[str, Share, Share]]:
    """Shares now and by the horizon grouped by ``key`` (of a repository id), most bytes
    (then objects) first."""
    now, later = (
        _grouped(result.now.by_repository.items(), key),
        _grouped(result.by_horizon.by_repository.items(), key),
    )
    rows = [(name, now.get(name, Share()), share) for name, share in later.items()]
    return sorted(rows, key=lambda row: (-row[1].bytes, -row[1].objects, -row[2].bytes, row[0]))


def _grouped(shares: Iterable[tuple[int | None, Share]], key: Naming) -> dict[str, Share]:
    grouped: dict[str, Share] = {}
    for repository_id, share in shares:
        name = key(repository_id)
        grouped[name] = grouped.get(name, Share()) + share
    return grouped


def _path(result: Plan) -> Naming:
    def path(repository_id: int | None) -> str:
        if repository_id is None:
            return REGISTRY_WIDE
        return result.paths.get(repository_id, f"repository {repository_id}")

    return path


def _namespace(result: Plan) -> Naming:
    def namespace(repository_id: int | None) -> str:
        return _path(result)(repository_id).partition("/")[0]

    return namespace


def _iso(ms: int) -> str | None:
    """``ms`` as an ISO time; None beyond what a datetime holds (a saturated due time)."""
    try:
        return ms_to_datetime(ms).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def _bytes(size: int) -> str:
    for unit, scale in _UNITS:
        if abs(size) >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size:,} B"


_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def _duration(seconds: int) -> str:
    for unit, scale in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % scale == 0:
            return f"{seconds // scale}{unit}"
    return f"{seconds}s"
