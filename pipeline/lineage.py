"""`python -m pipeline.lineage [wandb dir]`: the W&B runs written offline, and their lineage.

Reads `wandb/offline-run-*/run-*.wandb` directly (wandb 0.31 ships no reader for them and its public
API needs a server), so what `wandb sync` would upload can be checked first: each run's name, stage,
rung and group, the artifacts it used and logged, and which run's artifact each use resolves to (same
name and digest: one artifact version once synced).

A `.wandb` file is a LevelDB-style log (`:W&B` header, 32 KiB blocks of CRC-checked chunks) of
`wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path):
    """The protobuf `Record`s of one `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B transaction log (header {ident!r} {magic:#x} v{version})")
    pos, pending = _HEADER.size, b""
    while pos + _CHUNK.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK.size:  # block trailer padding
            pos += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding to the end of a block
            pos += left
            continue
        chunk = data[pos + _CHUNK.size: pos + _CHUNK.size + length]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt chunk at byte {pos}")
        pos += _CHUNK.size + length
        if kind == _FULL:
            pending, done = b"", chunk
        elif kind == _FIRST:
            pending, done = chunk, None
        elif kind == _MIDDLE:
            pending, done = pending + chunk, None
        else:
            pending, done = b"", pending + chunk
        if done is not None:
            rec = pb.Record()
            rec.ParseFromString(done)
            yield rec


@dataclass
class OfflineRun:
    path: Path
    run_id: str = ""
    name: str = ""
    job_type: str = ""
    group: str = ""
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    logged: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, digest)
    used: list[tuple[str, str, str]] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # artifact name -> paths inside it
    exit_code: int | None = None


def _set(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_run(path: str | Path) -> OfflineRun:
    """One offline run directory (or its .wandb file)."""
    path = Path(path)
    log = path if path.suffix == ".wandb" else next(path.glob("run-*.wandb"))
    run = OfflineRun(path=log.parent)
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.name, run.job_type, run.group = r.run_id, r.display_name, r.job_type, r.run_group
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in rec.summary.update:
                _set(run.summary, item)
        elif kind == "artifact":
            a = rec.artifact
            if a.type.startswith("run_table") or a.type == "wandb-history":
                continue  # W&B's own storage for logged tables, not lineage
            entry = (a.name, a.type, a.digest)
            (run.used if a.use_after_commit else run.logged).append(entry)
            run.files[a.name] = [c.path for c in a.manifest.contents]
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def read_runs(wandb_dir: str | Path = "wandb") -> list[OfflineRun]:
    """Every offline run under a `wandb/` directory, oldest first (the order `wandb sync` takes)."""
    return [read_run(p) for p in sorted(Path(wandb_dir).glob("offline-run-*")) if list(p.glob("run-*.wandb"))]


def edges(runs: list[OfflineRun]) -> list[tuple[str, str, str]]:
    """(producer run, artifact, consumer run): a use whose name and digest match a logged artifact."""
    producer = {(n, d): r.name for r in runs for n, _, d in r.logged}
    return [(producer[(n, d)], n, r.name) for r in runs for n, _, d in r.used if (n, d) in producer]


def listing(runs: list[OfflineRun]) -> str:
    lines = [f"{len(runs)} offline runs"]
    for r in runs:
        rung = r.config.get("rung")
        lines.append(f"- {r.name}  (job {r.job_type}{', rung ' + rung if rung else ''}, group {r.group}, "
                     f"exit {r.exit_code})")
        for n, t, d in r.used:
            lines.append(f"    uses {n}:{d[:8]} ({t})")
        for n, t, d in r.logged:
            lines.append(f"    logs {n}:{d[:8]} ({t}, {len(r.files.get(n, []))} files)")
    found = edges(runs)
    lines.append(f"lineage ({len(found)} edges: producer --artifact--> consumer)")
    lines += [f"  {p} --{a}--> {c}" for p, a, c in found]
    unresolved = [(r.name, n) for r in runs for n, _, d in r.used
                  if not any(n == a and d == dd for rr in runs for a, _, dd in rr.logged)]
    lines += [f"  (no run here logged {n}, used by {c})" for c, n in unresolved]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wandb_dir", nargs="?", default="wandb")
    args = ap.parse_args(argv)
    runs = read_runs(args.wandb_dir)
    if not runs:
        print(f"no offline runs under {args.wandb_dir}/ (offline-run-*)", file=sys.stderr)
        return 1
    print(listing(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
