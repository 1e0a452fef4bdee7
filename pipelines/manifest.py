"""Manifests, quarantine records and deterministic shard packing shared by the ingest and teachers jobs.

Output layout of a job writing to ``<out>``::

    <out>/config.json                 resolved config + hash, written first; a rerun with another config is refused
    <out>/_staging/<unit>.tar         one deterministic tar per scene (ingest) or per clip (teachers)
    <out>/_staging/<unit>.quarantine.json
    <out>/<prefix>-000000.tar ...     final shards, scenes in sorted scene-id order, a scene never split
    <out>/quarantine.json             every quarantined input with its typed reason
    <out>/manifest.json               written LAST: shards with sample count, bytes, sha256, keys

Readers trust ``manifest.json`` (never a listing): a shard absent from it does not exist, and a job without a
manifest has not finished. Every object is written in one PUT (object stores) or written to a temporary name and
renamed (local disks), so a killed job leaves whole objects or none.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines import storage
from pipelines.schema import SCHEMA_VERSION, read_tar, write_tar

if TYPE_CHECKING:
    import webdataset as wds

MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.json"
QUARANTINE_NAME = "quarantine.json"
STAGING_DIR = "_staging"


class ManifestError(ValueError):
    """A manifest or output directory is missing, inconsistent, or belongs to another config."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


@dataclass(frozen=True)
class QuarantineRecord:
    """An input that produced no samples: its URI, the typed error class name and the message."""

    scene_id: str
    uri: str
    error_type: str
    reason: str


@dataclass(frozen=True)
class ShardRecord:
    """One final shard: name relative to the manifest's directory, sample count, byte size, sha256, keys."""

    name: str
    num_samples: int
    num_bytes: int
    sha256: str
    scenes: list[str]
    keys: list[str]


@dataclass
class Manifest:
    """The index of a finished job; ``kind`` is ``clips`` or ``train``."""

    kind: str
    config: dict[str, Any]
    config_hash: str
    shards: list[ShardRecord] = field(default_factory=list)
    quarantine: list[QuarantineRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str = "manifest") -> Manifest:
        try:
            raw = json.loads(data)
            return cls(
                kind=raw["kind"],
                config=raw["config"],
                config_hash=raw["config_hash"],
                shards=[ShardRecord(**s) for s in raw["shards"]],
                quarantine=[QuarantineRecord(**q) for q in raw["quarantine"]],
                summary=raw.get("summary", {}),
                schema_version=raw["schema_version"],
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ManifestError(uri, f"not a valid manifest ({err!r})") from err


def put_atomic(uri: str, data: bytes) -> None:
    """Write an object whole or not at all (single PUT on object stores, temp file + rename on local disks)."""
    fs, path = storage.filesystem(uri)
    if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        storage.write_bytes(uri, data)
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def manifest_uri(out: str) -> str:
    return storage.join(out, MANIFEST_NAME)


def staging_uri(out: str, unit: str, suffix: str = ".tar") -> str:
    return storage.join(out, STAGING_DIR, unit + suffix)


def read_manifest(uri: str) -> Manifest:
    """Read a manifest from its URI or from the job's output directory."""
    if not uri.endswith(".json"):
        uri = manifest_uri(uri)
    if not storage.exists(uri):
        raise ManifestError(uri, "no manifest: the job has not finished (or the path is wrong)")
    return Manifest.from_json(storage.read_bytes(uri), uri)


def shard_uris(manifest_or_uri: Manifest | str, base: str | None = None) -> list[str]:
    """Absolute URIs of the shards a manifest lists (``base`` = the manifest's directory)."""
    if isinstance(manifest_or_uri, str):
        base = manifest_or_uri if not manifest_or_uri.endswith(".json") else posixpath.dirname(manifest_or_uri)
        manifest_or_uri = read_manifest(manifest_or_uri)
    if base is None:
        raise ManifestError("<manifest>", "base directory needed to resolve shard names")
    return [storage.join(base, s.name) for s in manifest_or_uri.shards]


def _open_streams(uris: Sequence[str]) -> Iterator[dict[str, Any]]:
    # webdataset 1.0.2 has no s3 URL handler: open through fsspec and hand the library file objects.
    for uri in uris:
        with storage.open_uri(uri, "rb") as stream:
            yield {"url": uri, "stream": stream}


def webdataset_pipeline(uris: Sequence[str]) -> wds.DataPipeline:
    """A ``webdataset`` pipeline yielding raw sample dicts (``__key__``, ``__url__``, ext -> bytes)."""
    # Imported here: webdataset imports torch (~1 s of CPU), and the Ray tasks that only stage, pack or list
    # shards through this module often start in fresh worker processes.
    import webdataset as wds

    return wds.DataPipeline(
        lambda: _open_streams(list(uris)), wds.tariterators.tar_file_expander, wds.tariterators.group_by_keys
    )


def iter_manifest_samples(uri: str, verify: bool = False) -> Iterator[dict[str, Any]]:
    """Raw sample dicts of every shard the manifest at ``uri`` lists, in manifest order.

    Args:
        uri: a ``manifest.json`` URI or the job's output directory.
        verify: check each shard's byte size and sha256 against the manifest before yielding its samples
            (reads each shard twice).
    """
    manifest_path = uri if uri.endswith(".json") else manifest_uri(uri)
    manifest = read_manifest(manifest_path)
    base = posixpath.dirname(manifest_path)
    for record, shard in zip(manifest.shards, shard_uris(manifest, base), strict=True):
        if verify:
            data = storage.read_bytes(shard)
            if len(data) != record.num_bytes or hashlib.sha256(data).hexdigest() != record.sha256:
                raise ManifestError(shard, "shard bytes do not match the manifest's size/sha256")
        yield from webdataset_pipeline([shard])


def check_config(out: str, config: dict[str, Any], config_hash: str) -> None:
    """Write ``<out>/config.json`` or, on a rerun, refuse an output directory made with another config."""
    uri = storage.join(out, CONFIG_NAME)
    if storage.exists(uri):
        existing = json.loads(storage.read_bytes(uri))
        if existing.get("config_hash") != config_hash:
            raise ManifestError(
                uri, f"output was written with config {existing.get('config_hash')}, this run has {config_hash}; "
                "use a new --out or the same config"
            )
        return
    put_atomic(uri, json.dumps({"config": config, "config_hash": config_hash}, indent=1, sort_keys=True).encode())


# ------------------------------------------------------------------------------------------------ packing
@dataclass(frozen=True)
class StagedUnit:
    """A staged object ready to pack: ``scene_id`` groups units that must share a shard."""

    scene_id: str
    uri: str
    num_bytes: int


def plan_shards(units: Sequence[StagedUnit], target_bytes: int) -> list[list[StagedUnit]]:
    """Group units by scene (sorted scene ids, units sorted by URI) and roll shards at ``target_bytes``.

    A scene is never split; a scene larger than the target gets a shard of its own.
    """
    scenes: dict[str, list[StagedUnit]] = {}
    for unit in sorted(units, key=lambda u: (u.scene_id, u.uri)):
        scenes.setdefault(unit.scene_id, []).append(unit)
    plan: list[list[StagedUnit]] = []
    size = 0
    for scene_units in scenes.values():
        scene_bytes = sum(u.num_bytes for u in scene_units)
        if not plan or (size > 0 and size + scene_bytes > target_bytes):
            plan.append([])
            size = 0
        plan[-1].extend(scene_units)
        size += scene_bytes
    return plan


def build_shard(units: Sequence[StagedUnit], shard_uri: str) -> ShardRecord:
    """Concatenate staged tars into one final shard (members sorted by key then field), unless it exists.

    The bytes depend only on the staged contents, so a shard left by a killed run (written atomically) is
    identical to the one this call would write and is reused after its size and hash are read back.
    """
    name = posixpath.basename(shard_uri)
    members = [m for unit in units for m in read_tar(storage.read_bytes(unit.uri), unit.uri)]
    members.sort(key=lambda m: tuple(m[0].partition(".")[::2]))
    keys = sorted({m[0].partition(".")[0] for m in members})
    data = write_tar(members)
    fs, path = storage.filesystem(shard_uri)
    fs.invalidate_cache(path)  # a long-lived worker may hold a listing from before the shard was removed
    if fs.exists(path):
        existing = fs.cat_file(path)
        if existing != data:
            raise ManifestError(shard_uri, "an existing shard differs from the staged data; remove the output")
    else:
        put_atomic(shard_uri, data)
    return ShardRecord(
        name=name,
        num_samples=len(keys),
        num_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        scenes=sorted({u.scene_id for u in units}),
        keys=keys,
    )


def check_unique_keys(records: Sequence[ShardRecord]) -> None:
    seen: set[str] = set()
    for record in records:
        dup = seen.intersection(record.keys)
        if dup:
            raise ManifestError(record.name, f"duplicate sample keys across shards: {sorted(dup)[:5]}")
        seen.update(record.keys)


def list_staged(out: str) -> tuple[dict[str, str], dict[str, str]]:
    """``({unit: tar uri}, {unit: quarantine uri})`` of what a previous run already staged under ``out``."""
    fs, path = storage.filesystem(storage.join(out, STAGING_DIR))
    # Workers wrote these objects: drop this process's listing cache (s3fs keeps one per filesystem instance).
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return {}, {}
    tars, quarantined = {}, {}
    proto = storage.join(out, STAGING_DIR)
    for entry in fs.ls(path, detail=False):
        base = posixpath.basename(entry)
        if base.endswith(".quarantine.json"):
            quarantined[base[: -len(".quarantine.json")]] = storage.join(proto, base)
        elif base.endswith(".tar"):
            tars[base[: -len(".tar")]] = storage.join(proto, base)
    return tars, quarantined


def remove_staging(out: str) -> None:
    fs, path = storage.filesystem(storage.join(out, STAGING_DIR))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def write_quarantine_record(out: str, unit: str, record: QuarantineRecord) -> None:
    put_atomic(staging_uri(out, unit, ".quarantine.json"), json.dumps(asdict(record), sort_keys=True).encode())


def read_quarantine_record(uri: str) -> QuarantineRecord:
    return QuarantineRecord(**json.loads(storage.read_bytes(uri)))


def finalize(
    out: str,
    kind: str,
    prefix: str,
    config: dict[str, Any],
    hash_: str,
    units: Sequence[StagedUnit],
    quarantine: Sequence[QuarantineRecord],
    target_bytes: int,
    summary: dict[str, Any],
    build=None,
    keep_staging: bool = False,
) -> Manifest:
    """Pack staged units into shards, write ``quarantine.json`` and the manifest (last), drop the staging area.

    Args:
        build: optional callable ``(list of (units, shard_uri)) -> list[ShardRecord]`` that builds shards in
            parallel (the jobs pass a Ray Data one); the default builds them here, one by one.
        keep_staging: keep ``<out>/_staging`` (debugging); by default it is removed once the manifest exists.
    """
    from pipelines.schema import shard_name

    plan = plan_shards(units, target_bytes)
    jobs = [(group, storage.join(out, shard_name(prefix, i))) for i, group in enumerate(plan)]
    records = build(jobs) if build is not None else [build_shard(g, u) for g, u in jobs]
    records = sorted(records, key=lambda r: r.name)
    check_unique_keys(records)
    quarantine = sorted(quarantine, key=lambda q: q.scene_id)
    put_atomic(storage.join(out, QUARANTINE_NAME), json.dumps([asdict(q) for q in quarantine], indent=1).encode())
    manifest = Manifest(kind=kind, config=config, config_hash=hash_, shards=records, quarantine=list(quarantine))
    manifest.summary = {
        **summary,
        "shards": len(records),
        "samples": manifest.num_samples,
        "bytes": sum(r.num_bytes for r in records),
        "quarantined": len(quarantine),
    }
    put_atomic(manifest_uri(out), manifest.to_json())
    if not keep_staging:
        remove_staging(out)
    return manifest


def staged_unit_from_uri(scene_id: str, uri: str) -> StagedUnit:
    fs, path = storage.filesystem(uri)
    return StagedUnit(scene_id=scene_id, uri=uri, num_bytes=int(fs.size(path)))



def format_summary(manifest: Manifest) -> str:
    """Human-readable summary of a finished job: counts, bytes, throughput and every quarantined input."""
    lines = [f"{manifest.kind} job summary:"]
    lines += [f"  {k}: {v}" for k, v in sorted(manifest.summary.items())]
    lines += [f"  quarantined {q.scene_id} ({q.uri}): {q.error_type}: {q.reason}" for q in manifest.quarantine]
    return "\n".join(lines)
