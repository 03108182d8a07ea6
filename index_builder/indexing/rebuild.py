"""Full and incremental gallery builds, guarded against losing the gallery.

An incremental build compares the photos on disk with the kept versions by content hash:
photos whose sha256 a kept version made by the same model holds (unchanged, moved, copied, or
only in an older version, as after a bad rebuild) reuse its vector, photos it failed to decode
stay skipped, and only the rest are embedded. Read errors are not remembered: such files are
tried again by the next build. A full build embeds everything; it is what ``build-index`` does
and what ``--full`` asks for; a model change, a missing or unreadable current version reuse
what kept versions of the new model hold, if any. Ids are rows in path order, so both kinds
give the same version for the same photos. When nothing changed, no version is written
(re-running a finished build is a no-op).

Guards: a build that would index no photo, that found folders it cannot read, or that would
drop more than ``max_shrink`` of the photos the current version serves is refused before it
embeds anything and again before it commits, unless ``allow_empty`` / ``allow_shrink`` say so
(an unmounted disk or a permission change must not empty the served gallery).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gallery_store.base import (
    KEEP,
    IndexIntegrityError,
    Manifest,
    ManifestItem,
    ModelInfo,
    Report,
    SkippedItem,
    StoredVersion,
    VectorStore,
)
from gallery_store.faiss_store import FaissStore
from gallery_store.photos import printable
from index_builder.indexing.embed import Embedded, default_workers, lane_threads
from index_builder.indexing.engines import EmbedFn, Engine, check_engine, embedder
from index_builder.indexing.scan import PhotoFile, Scan, Skipped, scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import clean_message

LoadedIndex = StoredVersion  # what the planning below reads: any engine's version

SHOWN_SKIPS = 20  # skipped files listed in the summary (all are in report.json)


class GallerySettings(BaseSettings):
    """Gallery build defaults (``SBIR_GALLERY_<NAME>``; the CLI flags override them)."""

    model_config = SettingsConfigDict(env_prefix="SBIR_GALLERY_")

    max_shrink: float = Field(
        0.2, ge=0.0, le=1.0, description="share of the served photos a rebuild may drop"
    )
    batch_size: int = Field(32, ge=1, description="photos per encoder batch")
    workers: int = Field(default_factory=default_workers, ge=1, description="decode + encode lanes")
    keep: int = Field(KEEP, ge=1, description="served index versions to keep")
    engine: Engine = Field("local", description="embedding engine: local or ray (Ray Data)")
    ray_address: str | None = Field(None, description="Ray cluster (default: a local Ray)")


class GuardError(ValueError):
    """A build refused because it would lose photos the gallery serves (or index none)."""


@dataclass(frozen=True)
class BuildOptions:
    """How to embed (batch size, lanes, the engine and its Ray cluster), versions
    kept, progress bars, and the guards: the share of served photos a build may drop, and the
    explicit overrides."""

    batch_size: int = 32
    workers: int = field(default_factory=default_workers)
    keep: int = KEEP
    progress: bool = False
    max_shrink: float = 0.2
    allow_shrink: bool = False
    allow_empty: bool = False
    engine: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        check_engine(self.engine, self.ray_address)
        for name in ("batch_size", "workers", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}"
                )
        if not 0.0 <= self.max_shrink <= 1.0:
            raise ValueError(f"max-shrink must be between 0 and 1, not {self.max_shrink}")


@dataclass(frozen=True)
class BuildResult:
    """The version written (None when already up to date) and its report and manifest;
    ``index_dir``: the store it went into."""

    index_dir: VectorStore
    version: str | None
    report: Report
    manifest: Manifest

    def summary(self) -> str:
        """A few lines for people."""
        r, m = self.report, self.manifest
        index = _describe_index(m)
        if self.version is None:
            return "\n".join(
                [
                    f"{self.index_dir.location}: up to date at {m.version} (no photo changed)",
                    f"  {m.count} photos indexed, {len(r.skipped)} skipped",
                    index,
                ]
            )
        more = len(r.skipped) - SHOWN_SKIPS
        return "\n".join(
            [
                f"{self.index_dir.location}: wrote {self.version} ({r.mode}: {r.reason})",
                f"  {m.count} photos indexed; {r.added} added, {r.changed} changed, "
                f"{r.removed} removed, {r.unchanged} unchanged; {r.embedded} embedded, "
                f"{r.reused} reused, {len(r.skipped)} skipped",
                index,
                *(f"  skipped {printable(s.path)}: {s.error}" for s in r.skipped[:SHOWN_SKIPS]),
                *(
                    [
                        f"  ... and {more} more skipped (all in "
                        f"{self.index_dir.report_path(self.version)})"
                    ]
                    if more > 0
                    else []
                ),
            ]
        )


def _describe_index(m: Manifest) -> str:
    info = m.index
    if info is None or info.kind == "qdrant":
        return f"  index: {info.factory if info else 'none'}"
    return (
        f"  index {info.factory} (nprobe {info.nprobe}), "
        f"recall@{info.recall_k} {info.recall_at_k:.3f} vs exact"
    )


@dataclass
class Plan:
    """Per scanned photo: reuse a kept vector, keep it skipped, or embed it."""

    reuse: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (base, row)
    carried: list[Skipped] = field(default_factory=list)
    to_embed: list[PhotoFile] = field(default_factory=list)


def as_store(index: str | Path | VectorStore) -> VectorStore:
    """A store as given, or the FAISS index directory at a path."""
    return index if isinstance(index, VectorStore) else FaissStore(index)


def build_new_index(
    model_dir: str | Path,
    photos: str | Path,
    index: str | Path | VectorStore,
    options: BuildOptions,
) -> BuildResult:
    """``build-index``: a full build into a store (an INDEX_DIR) that holds no index yet."""
    store = as_store(index)
    store.check_new()
    return rebuild(store, photos, model_dir, full=True, options=options, create=True)


def rebuild(
    index: str | Path | VectorStore,
    photos: str | Path | None = None,
    model_dir: str | Path | None = None,
    full: bool = False,
    options: BuildOptions | None = None,
    create: bool = False,
) -> BuildResult:
    """Bring a store (an INDEX_DIR: the FAISS one) up to date with ``photos`` (default: the
    current version's source) embedded by ``model_dir`` (default: the current version's
    model). It must hold an index unless ``create``."""
    index_dir, options = as_store(index), options or BuildOptions()
    if not create:
        index_dir.check_existing()
    embed = embedder(options.engine, options.ray_address)  # fails before the scan
    with index_dir.lock():
        index_dir.remove_stale()
        previous, problem = _previous(index_dir)
        photos, model_dir = _defaults(index_dir, previous, problem, photos, model_dir)
        encoder = OnnxEncoder(model_dir, "photo", intra_op_threads=lane_threads(options.workers))
        reason = _full_reason(full, previous, problem, encoder.fingerprint)
        bases = [] if full else _bases(index_dir, previous, encoder.fingerprint, older=False)
        started = time.perf_counter()
        scan = scan_photos(photos, options.workers, options.progress)
        plan = plan_build(scan, bases)
        if plan.to_embed and not full:  # older kept versions may hold them (verified: costs)
            bases = _bases(index_dir, previous, encoder.fingerprint, older=True)
            plan = plan_build(scan, bases)
        if reason is None and not plan.to_embed and _same_state(scan, plan, bases[0], encoder):
            return BuildResult(index_dir, None, bases[0].report, bases[0].manifest)
        reference = previous or _newest_served(index_dir)
        expected = [*plan.reuse, *(p.path for p in plan.to_embed)]
        check_guards(scan, _contents(scan, expected), reference, options, "would be")
        job = _Job(index_dir, encoder, scan, plan, bases, previous, reference, reason)
        return _build(job, {"scan": time.perf_counter() - started}, options, embed)


def check_guards(
    scan: Scan,
    kept: Counter[str],
    reference: LoadedIndex | None,
    options: BuildOptions,
    tense: str = "would be",
) -> None:
    """Raise GuardError for an empty gallery, unreadable folders, or a drop of more than
    ``options.max_shrink`` of ``reference``'s photos; ``kept``: how many photos of each
    sha256 the new version holds. Photos are counted, not contents: 99 of 100 copies of one
    photo gone are 99 photos dropped (a renamed or moved photo is none)."""
    where = printable(scan.source)
    if not kept and not options.allow_empty:
        raise GuardError(
            f"{where}: no photo {tense} indexed ({len(scan.files)} image files found, "
            f"{len(scan.unreadable)} skipped); is the disk mounted and the path right? Pass "
            "--allow-empty to write an empty index anyway"
        )
    if scan.unreadable_folders and not options.allow_shrink:
        folders = ", ".join(printable(f) for f in scan.unreadable_folders[:5])
        more = len(scan.unreadable_folders) - 5
        raise GuardError(
            f"{where}: {len(scan.unreadable_folders)} folders cannot be read ({folders}"
            f"{f' and {more} more' if more > 0 else ''}); their photos would be left out. Fix "
            "their permissions, or pass --allow-shrink to index without them"
        )
    if reference is None or options.allow_shrink:
        return
    before = Counter(it.sha256 for it in reference.manifest.items)
    dropped, served = (before - kept).total(), before.total()
    if served and dropped > options.max_shrink * served:
        raise GuardError(
            f"{where}: {dropped} of the {served} photos served by {reference.version} "
            f"{tense} dropped ({dropped / served:.0%}, more than the {options.max_shrink:.0%} "
            f"allowed; {len(scan.files)} image files found, {len(scan.unreadable)} skipped). "
            "Check that the photos are all there (a mounted disk, permissions, the right "
            "--photos), or pass --allow-shrink to accept the smaller gallery"
        )


def _contents(scan: Scan, paths: list[str]) -> Counter[str]:
    """How many of the photos at ``paths`` have each sha256."""
    wanted = set(paths)
    return Counter(p.sha256 for p in scan.files if p.path in wanted)


def _defaults(
    index_dir: VectorStore,
    previous: LoadedIndex | None,
    problem: str | None,
    photos: str | Path | None,
    model_dir: str | Path | None,
) -> tuple[str, str]:
    """The photos and model to use: given ones (absolute, links not resolved), else the
    current version's."""
    if previous is not None:
        photos = photos or previous.manifest.source
        model_dir = model_dir or previous.manifest.model.model_dir
    if not photos or not model_dir:
        why = f" ({problem})" if problem else ""
        raise ValueError(
            f"{index_dir.location}: no usable current version to take the photos "
            f"and the model from{why}; give --photos and --model"
        )
    return os.path.abspath(photos), os.path.abspath(model_dir)


def _previous(index_dir: VectorStore) -> tuple[LoadedIndex | None, str | None]:
    """The current version, verified, or None and why it cannot be used."""
    try:
        if index_dir.served() is None:
            return None, None
        return index_dir.load_current(), None
    except (IndexIntegrityError, FileNotFoundError) as err:
        return None, f"the current version is unusable ({err})"


def _bases(
    index_dir: VectorStore, previous: LoadedIndex | None, fingerprint: str, older: bool
) -> list[LoadedIndex]:
    """Versions whose vectors may be reused: the current one first, then with ``older`` the
    other kept served versions by the same model, newest first (damaged ones passed over)."""
    bases = [previous] if previous is not None and previous.fingerprint == fingerprint else []
    if not older:
        return bases
    for name in reversed(index_dir.served_versions()):
        if previous is not None and name == previous.version:
            continue
        try:
            loaded = index_dir.load_version(name)
        except (IndexIntegrityError, OSError):
            continue
        if loaded.fingerprint == fingerprint:
            bases.append(loaded)
    return bases


def _newest_served(index_dir: VectorStore) -> LoadedIndex | None:
    """The newest readable served version (what the guards compare with when CURRENT is
    unreadable)."""
    for name in reversed(index_dir.served_versions()):
        try:
            return index_dir.load_version(name)
        except (IndexIntegrityError, OSError):
            continue
    return None


def _full_reason(
    full: bool, previous: LoadedIndex | None, problem: str | None, fingerprint: str
) -> str | None:
    """Why this build cannot be an incremental one from the current version; None if it can."""
    if previous is None:
        return problem or "new index"
    if full:
        return "full rebuild requested"
    if previous.fingerprint != fingerprint:
        return f"model changed (fingerprint {previous.fingerprint[:12]} -> {fingerprint[:12]})"
    return None


def _remembered(skipped: SkippedItem) -> bool:
    """Whether a skip recorded earlier stands for the same bytes: decode failures do; read
    errors (also those recorded before ``retry`` existed) do not."""
    transient = ("cannot read the file", "the file changed while")
    return (
        skipped.sha256 is not None and not skipped.retry and not skipped.error.startswith(transient)
    )


def plan_build(scan: Scan, bases: list[LoadedIndex]) -> Plan:
    """Sort the scanned photos into reuse / keep skipped / embed, by content hash; the first
    base holding a hash gives its vector. A remembered failure is carried to every file of
    those bytes, so its message names no file (older reports' messages are cleaned)."""
    plan = Plan()
    rows: dict[str, tuple[int, int]] = {}
    skipped: dict[str, str] = {}
    for b, base in reversed(list(enumerate(bases))):  # earlier bases win
        rows |= {it.sha256: (b, it.id) for it in base.manifest.items}
        skipped |= {s.sha256: clean_message(s.error) for s in base.report.skipped if _remembered(s)}  # type: ignore[misc]
    for photo in scan.files:
        if photo.sha256 in rows:
            plan.reuse[photo.path] = rows[photo.sha256]
        elif photo.sha256 in skipped:
            plan.carried.append(Skipped(photo.path, photo.sha256, skipped[photo.sha256]))
        else:
            plan.to_embed.append(photo)
    return plan


def _same_state(scan: Scan, plan: Plan, base: LoadedIndex, encoder: OnnxEncoder) -> bool:
    """Whether the photos, their classes, the skipped ones and the model directory are
    exactly as in ``base`` (the current version), all reused from it."""
    m = base.manifest
    if any(b != 0 for b, _ in plan.reuse.values()):
        return False
    now = [(p.path, p.sha256, p.cls) for p in scan.files if p.path in plan.reuse]
    before = [(it.path, it.sha256, it.cls) for it in m.items]
    skipped_now = sorted((s.path, s.sha256, s.error) for s in [*plan.carried, *scan.unreadable])
    skipped_before = sorted((s.path, s.sha256, s.error) for s in base.report.skipped)
    same_place = (m.photos_root, m.source) == (str(scan.root), str(scan.source))
    same_model = m.model.model_dir == _model_dir(encoder)
    return now == before and skipped_now == skipped_before and same_place and same_model


def _model_dir(encoder: OnnxEncoder) -> str:
    return os.path.abspath(str(encoder.metadata.model_dir))


@dataclass(frozen=True)
class _Job:
    """One build's inputs: ``bases`` are what vectors are reused from (none for a full build),
    ``previous`` the current version the report compares with."""

    index_dir: VectorStore
    encoder: OnnxEncoder
    scan: Scan
    plan: Plan
    bases: list[LoadedIndex]
    previous: LoadedIndex | None
    reference: LoadedIndex | None  # what the guards compare with
    reason: str | None


def _build(
    job: _Job, seconds: dict[str, float], options: BuildOptions, embed: EmbedFn
) -> BuildResult:
    encoder, scan, plan = job.encoder, job.scan, job.plan
    t0 = time.perf_counter()
    embedded = embed(
        encoder, scan.root, plan.to_embed, options.batch_size, options.workers, options.progress
    )
    t1 = time.perf_counter()
    vectors, items = assemble(scan, plan, embedded, job.bases)
    check_guards(scan, Counter(it.sha256 for it in items), job.reference, options, "would be")
    seconds |= {"embed": t1 - t0}
    manifest = Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=ModelInfo(
            fingerprint=encoder.fingerprint,
            backbone=encoder.metadata.backbone,
            embedding_dim=encoder.embedding_dim,
            model_dir=_model_dir(encoder),
        ),
        photos_root=str(scan.root),
        source=str(scan.source),
        count=len(items),
        items=items,
    )
    report = _report(job, embedded, seconds)
    # the index time (FAISS: choosing and training the index) is the store's commit
    version = job.index_dir.commit(vectors, manifest, report, options.keep)
    return BuildResult(job.index_dir, version, report, manifest)


def assemble(
    scan: Scan, plan: Plan, embedded: Embedded, bases: list[LoadedIndex]
) -> tuple[np.ndarray, list[ManifestItem]]:
    """Vectors and manifest items of the new version, in path order."""
    new_rows = {p.path: i for i, p in enumerate(embedded.done)}
    items: list[ManifestItem] = []
    reused: dict[int, list[tuple[int, int]]] = {}  # base -> [(new id, its row)]
    fresh: list[tuple[int, int]] = []  # (new id, row of ``embedded``)
    for photo in scan.files:
        if photo.path in plan.reuse:
            b, row = plan.reuse[photo.path]
            reused.setdefault(b, []).append((len(items), row))
            old = bases[b].manifest.items[row]
            size = (old.width, old.height)
        elif photo.path in new_rows:
            fresh.append((len(items), new_rows[photo.path]))
            size = embedded.sizes[new_rows[photo.path]]
        else:
            continue
        items.append(
            ManifestItem(
                id=len(items),
                path=photo.path,
                cls=photo.cls,
                width=size[0],
                height=size[1],
                sha256=photo.sha256,
            )
        )
    vectors = np.zeros((len(items), embedded.vectors.shape[1]), np.float32)
    for b, pairs in reused.items():
        ids, rows = np.array(pairs).T
        vectors[ids] = bases[b].vectors()[rows]
    if fresh:
        ids, rows = np.array(fresh).T
        vectors[ids] = embedded.vectors[rows]
    return vectors, items


def _report(job: _Job, embedded: Embedded, seconds: dict[str, float]) -> Report:
    """What changed since the current version, what was embedded, reused and skipped."""
    scan, plan, reason = job.scan, job.plan, job.reason
    if reason and plan.reuse:
        reason += "; vectors reused from kept versions of this model"
    before = _previous_paths(job.previous)
    now = {p.path: p.sha256 for p in scan.files} | {s.path: s.sha256 for s in scan.unreadable}
    skipped = sorted([*plan.carried, *embedded.skipped, *scan.unreadable], key=lambda s: s.path)
    return Report(
        mode="full" if reason and not plan.reuse else "incremental",
        reason=reason or "photos changed",
        added=len(now.keys() - before.keys()),
        changed=sum(1 for p, h in now.items() if p in before and before[p] != h),
        removed=len(before.keys() - now.keys()),
        unchanged=sum(1 for p, h in now.items() if p in before and before[p] == h),
        embedded=len(embedded.done),
        reused=len(plan.reuse),
        skipped=[
            SkippedItem(path=s.path, sha256=s.sha256, error=s.error, retry=s.retry) for s in skipped
        ],
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def _previous_paths(base: LoadedIndex | None) -> dict[str, str | None]:
    if base is None:
        return {}
    return {it.path: it.sha256 for it in base.manifest.items} | {
        s.path: s.sha256 for s in base.report.skipped
    }
