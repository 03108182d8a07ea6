"""Full and incremental gallery builds.

An incremental build compares the photos on disk with the current version by content hash:
photos whose sha256 the current version already holds (unchanged, moved or copied) reuse its
vector, photos it skipped as unusable stay skipped, and only the rest are embedded. A full
build embeds everything; it is what ``build-index`` does, what ``--full`` asks for, and what a
model change (another fingerprint), a missing or unreadable current version forces.
Ids are rows in path order, so both kinds give the same version for the same photos. When
nothing changed, no version is written (re-running a finished build is a no-op).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from index_builder.gallery.embed import Embedded, embed_photos
from index_builder.gallery.faiss_index import build_index
from index_builder.gallery.scan import PhotoFile, Scan, Skipped, scan_photos
from index_builder.gallery.store import (
    KEEP,
    VERSIONS,
    IndexIntegrityError,
    LoadedIndex,
    Manifest,
    ManifestItem,
    ModelInfo,
    Payload,
    Report,
    SkippedItem,
    commit_version,
    load_current,
    locked,
    read_pointer,
    remove_stale,
)
from model.encoder import OnnxEncoder


@dataclass(frozen=True)
class BuildOptions:
    """How to embed: batch size, decoding threads, versions kept, progress bars."""

    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    keep: int = KEEP
    progress: bool = False


@dataclass(frozen=True)
class BuildResult:
    """The version written (None when already up to date) and its report and manifest."""

    index_dir: Path
    version: str | None
    report: Report
    manifest: Manifest

    def summary(self) -> str:
        """A few lines for people."""
        r, m = self.report, self.manifest
        index = (f"  index {m.index.factory} (nprobe {m.index.nprobe}), "
                 f"recall@{m.index.recall_k} {m.index.recall_at_k:.3f} vs exact")  # fmt: skip
        if self.version is None:
            return "\n".join([
                f"{self.index_dir}: up to date at {m.version} (no photo changed)",
                f"  {m.count} photos indexed, {len(r.skipped)} skipped", index,
            ])  # fmt: skip
        return "\n".join([
            f"{self.index_dir}: wrote {self.version} ({r.mode}: {r.reason})",
            f"  {m.count} photos indexed; {r.added} added, {r.changed} changed, "
            f"{r.removed} removed, {r.unchanged} unchanged; {r.embedded} embedded, "
            f"{r.reused} reused, {len(r.skipped)} skipped",
            index,
            *(f"  skipped {s.path}: {s.error}" for s in r.skipped[:20]),
        ])  # fmt: skip


@dataclass
class Plan:
    """Per scanned photo: reuse a previous vector, keep it skipped, or embed it."""

    reuse: dict[str, int] = field(default_factory=dict)  # path -> previous row
    carried: list[Skipped] = field(default_factory=list)
    to_embed: list[PhotoFile] = field(default_factory=list)


def build_new_index(
    model_dir: str | Path, photos: str | Path, index_dir: str | Path, options: BuildOptions
) -> BuildResult:
    """``build-index``: a full build into an INDEX_DIR that holds no index yet."""
    index_dir = Path(index_dir)
    if read_pointer(index_dir) is not None:
        raise ValueError(f"{index_dir}: already holds an index; use `rebuild` to update it")
    if index_dir.is_dir() and {p.name for p in index_dir.iterdir()} - {VERSIONS, ".lock"}:
        raise ValueError(f"{index_dir}: not empty and not an index directory; choose another")
    return rebuild(index_dir, photos, model_dir, full=True, options=options)


def rebuild(
    index_dir: str | Path,
    photos: str | Path | None = None,
    model_dir: str | Path | None = None,
    full: bool = False,
    options: BuildOptions | None = None,
) -> BuildResult:
    """Bring INDEX_DIR up to date with ``photos`` (default: the current version's source)
    embedded by ``model_dir`` (default: the current version's model)."""
    index_dir, options = Path(index_dir), options or BuildOptions()
    with locked(index_dir):
        remove_stale(index_dir)
        previous, problem = _previous(index_dir)
        photos, model_dir = _defaults(index_dir, previous, photos, model_dir)
        encoder = OnnxEncoder(model_dir, "photo")
        reason = _full_reason(full, previous, problem, encoder.fingerprint)
        base = None if reason else previous
        started = time.perf_counter()
        scan = scan_photos(photos, options.workers, options.progress)
        plan = plan_build(scan, base)
        if base is not None and not plan.to_embed and _same_state(scan, plan, base, encoder):
            return BuildResult(index_dir, None, base.report, base.manifest)
        job = _Job(index_dir, encoder, scan, plan, base, previous, reason)
        return _build(job, {"scan": time.perf_counter() - started}, options)


def _defaults(
    index_dir: Path,
    previous: LoadedIndex | None,
    photos: str | Path | None,
    model_dir: str | Path | None,
) -> tuple[str | Path, str | Path]:
    """The photos and model to use: given ones, else the current version's."""
    if previous is not None:
        photos = photos or previous.manifest.source
        model_dir = model_dir or previous.manifest.model.model_dir
    if not photos or not model_dir:
        raise ValueError(f"{index_dir}: no usable current version to take the photos and the "
                         "model from; give --photos and --model")  # fmt: skip
    return photos, model_dir


def _previous(index_dir: Path) -> tuple[LoadedIndex | None, str | None]:
    """The current version, verified, or None and why it cannot be used."""
    if read_pointer(index_dir) is None:
        return None, None
    try:
        return load_current(index_dir), None
    except (IndexIntegrityError, FileNotFoundError) as err:
        return None, f"the current version is unusable ({err})"


def _full_reason(
    full: bool, previous: LoadedIndex | None, problem: str | None, fingerprint: str
) -> str | None:
    """Why this build must embed everything; None for an incremental one."""
    if previous is None:
        return problem or "new index"
    if full:
        return "full rebuild requested"
    if previous.fingerprint != fingerprint:
        return (f"model changed (fingerprint {previous.fingerprint[:12]} -> "
                f"{fingerprint[:12]})")  # fmt: skip
    return None


def plan_build(scan: Scan, base: LoadedIndex | None) -> Plan:
    """Sort the scanned photos into reuse / keep skipped / embed, by content hash."""
    plan = Plan()
    rows = {} if base is None else {it.sha256: it.id for it in base.manifest.items}
    skipped = {} if base is None else {s.sha256: s.error for s in base.report.skipped if s.sha256}
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
    exactly as in ``base``."""
    m = base.manifest
    now = [(p.path, p.sha256, p.cls) for p in scan.files if p.path in plan.reuse]
    before = [(it.path, it.sha256, it.cls) for it in m.items]
    skipped_now = sorted((s.path, s.sha256, s.error) for s in [*plan.carried, *scan.unreadable])
    skipped_before = sorted((s.path, s.sha256, s.error) for s in base.report.skipped)
    same_place = (m.photos_root, m.source) == (str(scan.root), str(scan.source))
    same_model = m.model.model_dir == _model_dir(encoder)
    return now == before and skipped_now == skipped_before and same_place and same_model


def _model_dir(encoder: OnnxEncoder) -> str:
    return str(Path(str(encoder.metadata.model_dir)).resolve())


@dataclass(frozen=True)
class _Job:
    """One build's inputs: ``base`` is what vectors are reused from (None for a full build),
    ``previous`` the current version the report compares with."""

    index_dir: Path
    encoder: OnnxEncoder
    scan: Scan
    plan: Plan
    base: LoadedIndex | None
    previous: LoadedIndex | None
    reason: str | None


def _build(job: _Job, seconds: dict[str, float], options: BuildOptions) -> BuildResult:
    encoder, scan, plan = job.encoder, job.scan, job.plan
    t0 = time.perf_counter()
    embedded = embed_photos(encoder, scan.root, plan.to_embed, options.batch_size,
                            options.workers, options.progress)  # fmt: skip
    t1 = time.perf_counter()
    vectors, items = assemble(scan, plan, embedded, job.base)
    built = build_index(vectors)
    t2 = time.perf_counter()
    seconds |= {"embed": t1 - t0, "index": t2 - t1}
    manifest = Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=ModelInfo(fingerprint=encoder.fingerprint, backbone=encoder.metadata.backbone,
                        embedding_dim=encoder.embedding_dim,
                        model_dir=_model_dir(encoder)),
        photos_root=str(scan.root), source=str(scan.source), count=len(items),
        index=built.info, items=items,
    )  # fmt: skip
    report = _report(job, embedded, seconds)
    version = commit_version(job.index_dir, Payload(built.index, vectors, manifest, report),
                             options.keep)  # fmt: skip
    return BuildResult(job.index_dir, version, report, manifest)


def assemble(
    scan: Scan, plan: Plan, embedded: Embedded, base: LoadedIndex | None
) -> tuple[np.ndarray, list[ManifestItem]]:
    """Vectors and manifest items of the new version, in path order."""
    new_rows = {p.path: i for i, p in enumerate(embedded.done)}
    old_items = base.manifest.items if base is not None else []
    items: list[ManifestItem] = []
    reused: list[tuple[int, int]] = []  # (new id, old row)
    fresh: list[tuple[int, int]] = []  # (new id, row of ``embedded``)
    for photo in scan.files:
        if photo.path in plan.reuse:
            row = plan.reuse[photo.path]
            reused.append((len(items), row))
            size = (old_items[row].width, old_items[row].height)
        elif photo.path in new_rows:
            fresh.append((len(items), new_rows[photo.path]))
            size = embedded.sizes[new_rows[photo.path]]
        else:
            continue
        items.append(ManifestItem(id=len(items), path=photo.path, cls=photo.cls, width=size[0],
                                  height=size[1], sha256=photo.sha256))  # fmt: skip
    vectors = np.zeros((len(items), embedded.vectors.shape[1]), np.float32)
    if reused and base is not None:
        ids, rows = np.array(reused).T
        vectors[ids] = base.vectors()[rows]
    if fresh:
        ids, rows = np.array(fresh).T
        vectors[ids] = embedded.vectors[rows]
    return vectors, items


def _report(job: _Job, embedded: Embedded, seconds: dict[str, float]) -> Report:
    """What changed since the current version, what was embedded, reused and skipped."""
    scan, plan, reason = job.scan, job.plan, job.reason
    before = _previous_paths(job.previous)
    now = {p.path: p.sha256 for p in scan.files} | {s.path: s.sha256 for s in scan.unreadable}
    skipped = sorted([*plan.carried, *embedded.skipped, *scan.unreadable], key=lambda s: s.path)
    return Report(
        mode="full" if reason else "incremental",
        reason=reason or "photos changed",
        added=len(now.keys() - before.keys()),
        changed=sum(1 for p, h in now.items() if p in before and before[p] != h),
        removed=len(before.keys() - now.keys()),
        unchanged=sum(1 for p, h in now.items() if p in before and before[p] == h),
        embedded=len(embedded.done),
        reused=len(plan.reuse),
        skipped=[SkippedItem(path=s.path, sha256=s.sha256, error=s.error) for s in skipped],
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def _previous_paths(base: LoadedIndex | None) -> dict[str, str | None]:
    if base is None:
        return {}
    return {it.path: it.sha256 for it in base.manifest.items} | {
        s.path: s.sha256 for s in base.report.skipped
    }
