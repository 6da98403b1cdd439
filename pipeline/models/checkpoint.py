"""A checkpoint directory, trusted only as the build wrote it.

The prune stage records `file_digests(rung_dir)` in the rung's `pruning_report.json` as
`files_sha256`: the sha256 of every file `from_pretrained` may read (config.json,
generation_config.json, the tokenizer files, every weights shard and the shard index), i.e. every
file of the directory except the documentation written next to them. The manifest copies them,
and `check_rung_files` (used by `verify_rung` in the evaluation and by the runtime) refuses a
directory where any of them is missing or different, or where a file the build never wrote has
appeared (a config can name another weights file, a tokenizer can pick up an extra one).

Large checkpoints are sharded: `model-0000i-of-0000N.safetensors` plus `model.safetensors.index.json`,
whose `weight_map` says which file holds each tensor. `weight_files` resolves what a loader reads
(`model.safetensors` when present, as transformers prefers it, else every file the index names) and
refuses an index that names a file that is absent, not a safetensors file of this directory, or that
disagrees with the shards' own headers; `check_rung_files` also requires each of those files to be
among the recorded digests.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.common.assets import AssetError, sha256_file
from pipeline.common.formats import check_safetensors, read_json

# Written next to the checkpoint for people, never read by a loader (the report holds the digests).
DOCUMENTATION = frozenset({"pruning_report.json", "recipe.yaml", "README.md"})
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class ChecksumError(AssetError):
    """A file the build vouches for has a different sha256: refuse to use it."""


def shown(path: str | Path) -> str:
    """A path as a command run from here should name it: relative when under the current directory."""
    rel = os.path.relpath(Path(path))
    return rel if not rel.startswith("..") else str(Path(path).resolve())


# Loader arguments transformers copies into tokenizer_config.json that describe the shell a stage
# ran in, not the tokenizer (`local_files_only` follows HF_HUB_OFFLINE): left in, the same build
# from two shells hashes differently and DVC reruns everything downstream.
ENVIRONMENT_KWARGS = ("local_files_only", "cache_dir", "force_download", "proxies", "token")


def save_tokenizer(tok, directory: str | Path) -> None:
    """Write `tok` into a checkpoint directory, without the loading environment's arguments."""
    for key in ENVIRONMENT_KWARGS:
        tok.init_kwargs.pop(key, None)
    tok.save_pretrained(directory)


def file_digests(rung_dir: str | Path) -> dict[str, str]:
    """sha256 of every file a loader may read in a checkpoint directory, by file name."""
    rung_dir = Path(rung_dir)
    return {p.name: sha256_file(p) for p in sorted(rung_dir.iterdir())
            if p.is_file() and p.name not in DOCUMENTATION}


def weight_files(ckpt_dir: str | Path) -> list[str]:
    """The safetensors files `from_pretrained` reads from `ckpt_dir`, each checked for structure:
    `model.safetensors`, or, for a sharded checkpoint, every file its index's weight_map names.
    Raises AssetError naming the index and the file when the index and the shards disagree."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / SINGLE_FILE).is_file():
        check_safetensors(ckpt_dir / SINGLE_FILE)
        return [SINGLE_FILE]
    index = ckpt_dir / INDEX_FILE
    if not index.is_file():
        found = sorted(p.name for p in ckpt_dir.glob("*.safetensors"))
        raise AssetError(f"{shown(ckpt_dir)} has neither {SINGLE_FILE} nor {INDEX_FILE}"
                         + (f" (it has {', '.join(found)}: shards are loaded through their index)" if found else
                            " (only safetensors checkpoints are loaded)"))
    raw = read_json(index)
    wmap = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
        raise AssetError(f"{shown(index)}: no weight_map (tensor name -> shard file); not a shard index")
    names = sorted(set(wmap.values()))
    foreign = [n for n in names if Path(n).name != n or not n.endswith(".safetensors")]
    if foreign:
        raise AssetError(f"{shown(index)}: weight_map names {foreign}: a shard must be a .safetensors file in "
                         "the same directory")
    missing = [n for n in names if not (ckpt_dir / n).is_file()]
    if missing:
        raise AssetError(f"{shown(index)}: weight_map names {', '.join(missing)}, missing from {shown(ckpt_dir)}")
    for name in names:
        held = set(check_safetensors(ckpt_dir / name)) - {"__metadata__"}
        mapped = {t for t, f in wmap.items() if f == name}
        if not mapped <= held:
            lost = sorted(mapped - held)
            raise AssetError(f"{shown(index)}: weight_map puts {lost[:3]}{' ...' if len(lost) > 3 else ''} in "
                             f"{name}, which does not hold them")
    return names


def check_checkpoint_files(ckpt_dir: str | Path) -> None:
    """Structure only (no digests): config.json is JSON, every weights file is sound safetensors,
    and a shard index names only shards that are there."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise AssetError(f"checkpoint directory {ckpt_dir} does not exist")
    read_json(ckpt_dir / "config.json")
    shards = sorted(ckpt_dir.glob("*.safetensors"))
    if not shards:
        raise AssetError(f"{ckpt_dir} has no *.safetensors weights (only safetensors checkpoints are loaded)")
    for p in shards:
        check_safetensors(p)
    weight_files(ckpt_dir)


def check_rung_files(rung_dir: str | Path, digests: dict[str, str], what: str, restore: str) -> None:
    """Refuse a checkpoint that is not exactly the recorded files.

    `restore` is the command that brings the directory back, quoted in every message."""
    rung_dir = Path(rung_dir)
    if not rung_dir.is_dir():
        raise AssetError(f"{what}: {shown(rung_dir)} does not exist; {restore}")
    if "config.json" not in digests or not any(n.endswith(".safetensors") for n in digests):
        raise AssetError(f"{what}: the recorded files {sorted(digests)} lack config.json or safetensors weights; "
                         "rebuild with `dvc repro`")
    present = {p.name for p in rung_dir.iterdir()}
    missing = sorted(set(digests) - present)
    if missing:
        raise AssetError(f"{what}: {', '.join(missing)} missing from {shown(rung_dir)}; {restore}")
    unrecorded = sorted(present - set(digests) - DOCUMENTATION)
    if unrecorded:
        raise ChecksumError(f"{what}: {', '.join(unrecorded)} in {shown(rung_dir)} were not written by the build "
                            f"(a loader could read them); remove them, or {restore}")
    for name in sorted(digests):
        if name.endswith(".safetensors"):
            try:
                check_safetensors(rung_dir / name)
            except AssetError as exc:
                raise AssetError(f"{what}: {exc}; {restore}") from None
    for name, expected in sorted(digests.items()):
        actual = sha256_file(rung_dir / name)
        if actual != expected:
            raise ChecksumError(f"{what}: {shown(rung_dir / name)} has sha256 {actual}, but the build recorded "
                                f"{expected}: modified or corrupted after the build; {restore}")
    try:
        loaded = weight_files(rung_dir)
    except AssetError as exc:
        raise AssetError(f"{what}: {exc}; {restore}") from None
    unhashed = [n for n in loaded if n not in digests]
    if unhashed:  # unreachable while unrecorded files are refused above; kept as the guarantee itself
        raise ChecksumError(f"{what}: {', '.join(unhashed)} would be loaded but has no recorded sha256; {restore}")


def restore_hint(rung_dir: str | Path) -> str:
    return f"restore it with `dvc checkout --force {shown(rung_dir)}` or rebuild it with `dvc repro`"


def verify_rung(rung_dir: str | Path) -> dict:
    """Return the rung's pruning report; raise AssetError if any file is missing, extra or altered."""
    rung_dir = Path(rung_dir)
    if not rung_dir.is_dir():
        raise AssetError(f"rung directory {rung_dir} does not exist: run `dvc repro` to build the ladder")
    report = read_json(rung_dir / "pruning_report.json")
    digests = report.get("files_sha256")
    if not isinstance(digests, dict) or not digests:
        stage = "dense" if rung_dir.name == "dense" else f"prune@{rung_dir.name}"
        raise AssetError(f"{rung_dir / 'pruning_report.json'} records no files_sha256 (built before every file was "
                         f"hashed): rebuild it with `dvc repro {stage}`")
    check_rung_files(rung_dir, digests, f"rung {rung_dir.name}", restore_hint(rung_dir))
    return report
