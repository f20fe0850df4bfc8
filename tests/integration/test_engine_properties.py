"""Property: on random registries, the engine removes exactly what became unreachable.

The registries are built so that nothing is garbage beforehand but orphans:
objects nothing references and no event announces (of every kind). A run
removes its roots (due tags, expired uploads, or all of a purged repository),
with the orphan sweep also the orphans, and the reference model below says
what must survive: everything still reachable from the remaining roots, by the
rules of CONTRACT §3 (orphans the run did not sweep count as roots).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.db.connector import PoolDatabase
from collector.engine import Engine, EngineConfig
from collector.verify import verify
from tests.registry import DAY_MS, NOW_MS, WINDOW_S, FixedClock, Registry, outbox, snapshot

PROTECTED = "sha256:" + "e" * 64
#: Rows that live exactly as long as the tag manifest they hang on.
TAG_MANIFEST_TABLES = ("tag_manifest_to_manifest", "tag_manifest_label", "tag_manifest_label_map")


@dataclass
class Model:
    """The registry as the test built it."""

    windows: dict[int, int] = field(default_factory=dict)  # namespace -> window (s)
    repos: dict[int, tuple[int, bool]] = field(default_factory=dict)  # -> (namespace, marked)
    blob_exempt: set[int] = field(default_factory=set)  # placeholder or protected
    blobs: set[int] = field(default_factory=set)
    manifests: dict[int, int] = field(default_factory=dict)  # -> repository
    digests: dict[int, str] = field(default_factory=dict)
    subject: dict[int, str] = field(default_factory=dict)  # referrer -> subject digest
    manifest_blobs: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    children: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    manifest_labels: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    labels: set[int] = field(default_factory=set)
    tags: dict[int, tuple[int, int, int | None, bool]] = field(default_factory=dict)
    images: dict[int, tuple[int, int, int | None]] = field(
        default_factory=dict
    )  # repo, storage, parent
    derived: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (image, blob)
    legacy: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (manifest, image)
    uploads: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # repo, blob, expired
    #: Objects nothing referenced when built: garbage only an orphan sweep finds.
    orphan_manifests: set[int] = field(default_factory=set)
    orphan_images: set[int] = field(default_factory=set)
    orphan_labels: set[int] = field(default_factory=set)
    orphan_blobs: set[int] = field(default_factory=set)
    #: The pre-OCI model (CONTRACT §3.1).
    legacy_tags: dict[int, tuple[int, int, int | None]] = field(
        default_factory=dict
    )  # repo, image, lifetime end (s)
    #: tag manifest -> (its tag, mapped manifest or None, labels of its label rows)
    tag_manifests: dict[int, tuple[int, int | None, set[int]]] = field(default_factory=dict)
    #: rows that live exactly as long as their tag manifest, by table
    tag_manifest_rows: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    links: dict[int, tuple[int, int]] = field(default_factory=dict)  # -> (tag, repository_tag)

    def tag_due(self, tag_id: int) -> bool:
        repo, _, end_ms, immutable = self.tags[tag_id]
        window_ms = self.windows[self.repos[repo][0]] * 1000
        return end_ms is not None and not immutable and end_ms + window_ms <= NOW_MS

    def legacy_tag_due(self, tag_id: int) -> bool:
        repo, _, end_ts = self.legacy_tags[tag_id]
        window_s = self.windows[self.repos[repo][0]]
        return end_ts is not None and end_ts + window_s <= NOW_MS // 1000


async def build(reg: Registry, rng: random.Random) -> Model:
    model = Model()
    blob_pool: list[int] = []
    label_pool: list[int] = []
    names = iter(range(10_000))

    async def blob() -> int:
        if blob_pool and rng.random() < 0.4:
            return rng.choice(blob_pool)
        roll = rng.random()
        if roll < 0.1:
            blob_id = await reg.blob(locations=())
            model.blob_exempt.add(blob_id)
        elif roll < 0.2 and PROTECTED not in reg.used_digests:
            reg.used_digests.add(PROTECTED)
            blob_id = await reg.blob(digest=PROTECTED)
            model.blob_exempt.add(blob_id)
        else:
            blob_id = await reg.blob(locations=tuple(rng.sample(["s3", "gcs"], rng.randint(1, 2))))
        model.blobs.add(blob_id)
        blob_pool.append(blob_id)
        return blob_id

    async def label() -> int:
        if label_pool and rng.random() < 0.5:
            return rng.choice(label_pool)
        label_id = await reg.label(f"k{next(names)}")
        model.labels.add(label_id)
        label_pool.append(label_id)
        return label_id

    async def manifest(
        repo: int, *, children: tuple[int, ...] = (), subject: str | None = None
    ) -> int:
        blobs = {await blob() for _ in range(rng.randint(0, 3))}
        labels = {await label() for _ in range(rng.randint(0, 2))}
        digest = reg.digest()
        manifest_id = await reg.manifest(
            repo,
            blobs=tuple(blobs),
            labels=tuple(labels),
            children=children,
            subject=subject,
            digest=digest,
        )
        model.manifests[manifest_id] = repo
        model.digests[manifest_id] = digest
        model.manifest_blobs[manifest_id] = blobs
        model.manifest_labels[manifest_id] = labels
        model.children[manifest_id] = set(children)
        if subject is not None:
            model.subject[manifest_id] = subject
        return manifest_id

    async def pre_oci(repo: int, manifests: list[int]) -> None:
        """Pre-OCI tags on the repository's images, with tag manifests (some mapped to its
        manifests, some with labels) and links to its OCI tags."""
        images = [i for i, (r, _storage, _parent) in model.images.items() if r == repo]
        count = rng.randint(0, 3)
        if not images and count:  # an image only pre-OCI tags hold
            storage = await blob()
            images = [await reg.image(repo, storage)]
            model.images[images[0]] = (repo, storage, None)
        now_s = NOW_MS // 1000
        for _ in range(count):
            kind = rng.choice(["alive", "due", "in-window", "hidden"])
            end_ts = {
                "alive": None,
                "hidden": None,
                "due": now_s - WINDOW_S - DAY_MS // 1000,
                "in-window": now_s - DAY_MS // 1000,
            }[kind]
            image = rng.choice(images)
            tag = await reg.repository_tag(
                repo, image, f"l{next(names)}", end_ts=end_ts, hidden=kind == "hidden"
            )
            model.legacy_tags[tag] = (repo, image, end_ts)
            if rng.random() < 0.7:
                mapped = rng.choice(manifests) if rng.random() < 0.6 else None
                labels = {await label() for _ in range(rng.randint(0, 2))}
                tag_manifest = await reg.tag_manifest(
                    tag, manifest_id=mapped, labels=tuple(labels), repository_id=repo
                )
                model.tag_manifests[tag_manifest] = (tag, mapped, labels)
                for table, column in [
                    ("tag_manifest_to_manifest", "tag_manifest_id"),
                    ("tag_manifest_label", "annotated_id"),
                    ("tag_manifest_label_map", "tag_manifest_id"),
                ]:
                    for row in await reg.conn.fetch(
                        f"SELECT id FROM {table} WHERE {column} = $1", tag_manifest
                    ):
                        model.tag_manifest_rows[table][row["id"]] = tag_manifest
            linked = {oci for oci, _ in model.links.values()}
            free = [t for t, (r, *_rest) in model.tags.items() if r == repo and t not in linked]
            if free and rng.random() < 0.4:
                oci = rng.choice(free)
                model.links[await reg.tag_link(repo, oci, tag)] = (oci, tag)

    for i in range(rng.randint(1, 2)):
        window = rng.choice([0, WINDOW_S])
        model.windows[await reg.namespace(f"ns{i}", window_s=window)] = window
    for r in range(rng.randint(1, 3)):
        namespace = rng.choice(list(model.windows))
        marked = rng.random() < 0.35
        state = "marked_for_deletion" if marked else "normal"
        repo = await reg.repository(namespace, f"r{r}", state=state)
        model.repos[repo] = (namespace, marked)
        plain = [await manifest(repo) for _ in range(rng.randint(1, 5))]
        lists = [
            await manifest(repo, children=tuple(rng.sample(plain, rng.randint(1, len(plain)))))
            for _ in range(rng.randint(0, 2))
        ]
        referrers = [
            await manifest(repo, subject=model.digests[rng.choice(plain + lists)])
            for _ in range(rng.randint(0, 2))
        ]
        listed = set().union(*(model.children[m] for m in lists)) if lists else set()
        for manifest_id in plain + lists + referrers:
            needs_tag = manifest_id not in listed and manifest_id not in referrers
            for _ in range(rng.randint(1 if needs_tag else 0, 2)):
                kind = rng.choice(["alive", "due", "in-window", "immutable", "hidden"])
                end_ms = {
                    "alive": None,
                    "hidden": None,
                    "due": NOW_MS - WINDOW_S * 1000 - DAY_MS,
                    "in-window": NOW_MS - DAY_MS,
                    "immutable": NOW_MS - WINDOW_S * 1000 - DAY_MS,
                }[kind]
                tag_id = await reg.tag(
                    repo,
                    manifest_id,
                    f"t{next(names)}",
                    end_ms=end_ms,
                    immutable=kind == "immutable",
                    hidden=kind == "hidden",
                )
                model.tags[tag_id] = (repo, manifest_id, end_ms, kind == "immutable")
        unlinked = plain + lists + referrers
        rng.shuffle(unlinked)
        for _ in range(rng.randint(0, 2)):  # legacy chains, leaf linked from a manifest
            if not unlinked:
                break
            parent: int | None = None
            chain: list[int] = []
            for _ in range(rng.randint(1, 4)):
                storage = await blob()
                parent = await reg.image(repo, storage, parent)
                model.images[parent] = (repo, storage, chain[-1] if chain else None)
                chain.append(parent)
                if rng.random() < 0.3:
                    derivative = await blob()
                    model.derived[await reg.derived(parent, derivative)] = (parent, derivative)
            manifest_id = unlinked.pop()
            image_id = chain[-1]
            if len(chain) > 1 and unlinked and rng.random() < 0.5:  # a branch off the chain
                storage = await blob()
                branch = await reg.image(repo, storage, chain[0])
                model.images[branch] = (repo, storage, chain[0])
                other = unlinked.pop()
                model.legacy[await reg.legacy(repo, other, branch)] = (other, branch)
            model.legacy[await reg.legacy(repo, manifest_id, image_id)] = (manifest_id, image_id)
        for _ in range(rng.randint(0, 2)):
            expired = rng.random() < 0.5
            # An expired upload only ever names a blob something else keeps alive,
            # so the registry starts without garbage.
            if expired and not blob_pool:
                continue
            blob_id = rng.choice(blob_pool) if expired else await blob()
            expires = NOW_MS - DAY_MS if expired else NOW_MS + DAY_MS
            model.uploads[await reg.upload(repo, blob_id, expires_ms=expires)] = (
                repo,
                blob_id,
                expired,
            )
        await pre_oci(repo, plain + lists + referrers)
        for _ in range(rng.randint(0, 2)):  # orphans: untagged manifests and manifest lists
            children = tuple(rng.sample(plain, rng.randint(1, len(plain))))
            orphan = await manifest(repo, children=children if rng.random() < 0.3 else ())
            model.orphan_manifests.add(orphan)
        for _ in range(rng.randint(0, 1)):  # an orphan legacy chain, linked from nothing
            parent = None
            for _ in range(rng.randint(1, 3)):
                storage = await blob()
                image_id = await reg.image(repo, storage, parent)
                model.images[image_id] = (repo, storage, parent)
                parent = image_id
            assert parent is not None
            model.orphan_images.add(parent)
    for _ in range(rng.randint(0, 2)):
        orphan_label = await reg.label(f"k{next(names)}")
        model.labels.add(orphan_label)
        model.orphan_labels.add(orphan_label)
    for _ in range(rng.randint(0, 2)):
        orphan_blob = await reg.blob()
        model.blobs.add(orphan_blob)
        model.orphan_blobs.add(orphan_blob)
    return model


def expected(
    model: Model,
    collected: set[int],
    purged: set[int],
    swept: set[int] | None = None,
) -> dict[str, set[int]]:
    """What must survive a run that collected ``collected`` and purged ``purged``, and
    swept the orphans of ``swept`` (None: of the whole registry, labels and blobs too).
    Orphans not swept are roots."""
    local = set(model.repos) if swept is None else swept
    root_manifests = {m for m in model.orphan_manifests if model.manifests[m] not in local}
    root_images = {i for i in model.orphan_images if model.images[i][0] not in local | purged}
    tags = {
        t
        for t, (repo, *_rest) in model.tags.items()
        if repo not in purged and not (repo in collected and model.tag_due(t))
    }
    uploads = {
        u
        for u, (repo, _blob, expired) in model.uploads.items()
        if repo not in purged and not (repo in collected and expired)
    }
    legacy_tags = {
        t
        for t, (repo, _image, _end) in model.legacy_tags.items()
        if repo not in purged and not (repo in collected and model.legacy_tag_due(t))
    }
    tag_manifests = {tm for tm, (t, *_rest) in model.tag_manifests.items() if t in legacy_tags}
    survivors_repo = {m: r for m, r in model.manifests.items() if r not in purged}
    tagged = {model.tags[t][1] for t in tags}
    tagged |= {m for tm in tag_manifests if (m := model.tag_manifests[tm][1]) is not None}
    live: set[int] = set()
    changed = True
    while changed:  # least fixpoint of "kept alive by"
        changed = False
        for m, repo in survivors_repo.items():
            if m in live:
                continue
            listed = any(m in model.children[parent] for parent in live)
            subject_live = m in model.subject and any(
                model.digests[s] == model.subject[m] and survivors_repo[s] == repo for s in live
            )
            if m in tagged or listed or subject_live or m in root_manifests:
                live.add(m)
                changed = True
    images: set[int] = {image for (m, image) in model.legacy.values() if m in live}
    images |= root_images
    images |= {model.legacy_tags[t][1] for t in legacy_tags}
    frontier = list(images)
    while frontier:
        parent = model.images[frontier.pop()][2]
        if parent is not None and parent not in images:
            images.add(parent)
            frontier.append(parent)
    blobs = set(model.blob_exempt)
    if swept is not None:
        blobs |= model.orphan_blobs
    blobs |= {b for m in live for b in model.manifest_blobs[m]}
    blobs |= {model.images[i][1] for i in images}
    blobs |= {b for (i, b) in model.derived.values() if i in images}
    blobs |= {model.uploads[u][1] for u in uploads if not model.uploads[u][2]}
    uploads = {u for u in uploads if model.uploads[u][1] in blobs}
    return {
        "repository": set(model.repos) - purged,
        "tag": tags,
        "manifest": live,
        "image": images,
        "label": {label for m in live for label in model.manifest_labels[m]}
        | {label for tm in tag_manifests for label in model.tag_manifests[tm][2]}
        | (model.orphan_labels if swept is not None else set()),
        "blob": blobs,
        "uploaded_blob": uploads,
        "derived_image_storage": {d for d, (i, _b) in model.derived.items() if i in images},
        "manifest_legacy_image": {row for row, (m, _i) in model.legacy.items() if m in live},
        "repository_tag": legacy_tags,
        "tag_manifest": tag_manifests,
        **{
            table: {
                row for row, tm in model.tag_manifest_rows[table].items() if tm in tag_manifests
            }
            for table in (
                "tag_manifest_to_manifest",
                "tag_manifest_label",
                "tag_manifest_label_map",
            )
        },
        "tag_to_repository_tag": {
            row for row, (t, legacy) in model.links.items() if t in tags and legacy in legacy_tags
        },
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False), batch_size=st.integers(1, 6), data=st.data())
async def test_engine_removes_exactly_what_became_unreachable(
    db: asyncpg.Pool[asyncpg.Record], rng: random.Random, batch_size: int, data: st.DataObject
) -> None:
    """Random registries, collections and purges: survivors equal the reachability model,
    every removal has its event, and a second run changes nothing."""
    async with db.acquire() as conn:
        await conn.execute(
            "TRUNCATE namespace, repository, blob, label, gc.candidate, gc.outbox"
            " RESTART IDENTITY CASCADE"
        )
        reg = Registry(conn)
        model = await build(reg, rng)
        before = await snapshot(conn)
        config = EngineConfig(batch_size=batch_size, protected_digests=(PROTECTED,))
        engine = Engine(PoolDatabase(db), config, clock=FixedClock())

        orphans = data.draw(st.booleans(), label="orphans")
        everything = data.draw(st.booleans(), label="collect_all")
        if everything:
            purge_marked = data.draw(st.booleans(), label="purge_marked")
            purged = {r for r, (_ns, marked) in model.repos.items() if marked and purge_marked}
            collected = set(model.repos) - purged
            swept: set[int] | None = None if orphans else set()

            async def run() -> None:
                await engine.collect_all(
                    causation_id="c", purge_marked=purge_marked, orphans=orphans, concurrency=2
                )

        else:
            chosen = data.draw(st.sets(st.sampled_from(sorted(model.repos))), label="repositories")
            purged = {r for r in chosen if model.repos[r][1] and data.draw(st.booleans())}
            collected = chosen - purged
            swept = collected if orphans else set()

            async def run() -> None:
                for repo in sorted(chosen):
                    if repo in purged:
                        # A repeated purge finds the repository gone: nothing to do.
                        if await conn.fetchval("SELECT 1 FROM repository WHERE id = $1", repo):
                            await engine.purge(repo, causation_id="c")
                    else:
                        await engine.collect(repo, causation_id="c", orphans=orphans)

        await run()
        after = await snapshot(conn)
        want = expected(model, collected, purged, swept)
        for table, ids in want.items():
            assert after[table] == ids, table

        events = await outbox(conn)
        reported: dict[str, set[int]] = defaultdict(set)
        id_field = {
            "tag-removed": ("tag", "tag_id"),
            "manifest-removed": ("manifest", "manifest_id"),
            "blob-removed": ("blob", "blob_id"),
            "label-removed": ("label", "label_id"),
            "legacy-image-removed": ("image", "image_id"),
            "repo-purged": ("repository", "repository_id"),
            "legacy-tag-removed": ("repository_tag", "repository_tag_id"),
            "legacy-manifest-removed": ("tag_manifest", "tag_manifest_id"),
        }
        for event in events:
            table, key = id_field[event["type"].removeprefix("registry.gc.")]
            assert event["data"][key] not in reported[table], "one event per removal"
            reported[table].add(event["data"][key])
        for table in {table for table, _key in id_field.values()}:
            assert reported[table] == before[table] - after[table], table
        assert await conn.fetchval("SELECT count(*) FROM gc.candidate") == 0
        if everything and orphans and purge_marked:
            # Everything verify calls garbage was collected: nothing due, queued or waiting.
            found = await verify(
                conn, now_ms=NOW_MS, protected_digests=[PROTECTED], orphan_grace_s=3600
            )
            assert (found.dangling, found.garbage, found.queued, found.grace) == ([], [], [], [])

        await run()
        assert await snapshot(conn) == after
        assert len(await outbox(conn)) == len(events)
