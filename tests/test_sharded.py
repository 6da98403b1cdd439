"""Large checkpoints: a ladder written in safetensors shards goes through prune, verification,
evaluation, the manifest and the runtime; a missing or altered shard is refused by name; and prune
loads its parent's weights exactly once (never a second full copy of the base)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import prune
from pipeline.common.assets import AssetError
from pipeline.common.config import ConfigError, validate
from pipeline.models.checkpoint import INDEX_FILE, ChecksumError, check_checkpoint_files, verify_rung, weight_files
from pipeline.serve import LadderRuntime
from tests.conftest import tiny_config, write_params
from tests.test_deploy import build_routing, deploy_params
from tests.test_prune import tiny_ladder  # noqa: F401  (session fixture)

SHARD = "1MB"  # the tiny model's embedding alone is ~12.6 MB in fp32: every rung writes several files
RUNGS = ["dense", "mixed", "f80"]  # structured (compensated) and budget (allocator) rungs, nested


class WeightLoads:
    """A seam counting every way a model's weights are read: `from_pretrained` calls, the
    safetensors files transformers opens, and direct `safetensors.torch.load_file` reads."""

    def __init__(self, mp: pytest.MonkeyPatch):
        import safetensors.torch
        import transformers
        from transformers import modeling_utils

        self.from_pretrained: list[str] = []
        self.opened: list[Path] = []
        self.read: list[Path] = []
        orig = transformers.PreTrainedModel.from_pretrained.__func__
        orig_open, orig_load = modeling_utils.safe_open, safetensors.torch.load_file

        def counted(cls, path, *a, **k):
            self.from_pretrained.append(str(path))
            return orig(cls, path, *a, **k)

        def opened(filename, *a, **k):
            self.opened.append(Path(filename).resolve())
            return orig_open(filename, *a, **k)

        def read(filename, *a, **k):
            self.read.append(Path(filename).resolve())
            return orig_load(filename, *a, **k)

        mp.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(counted))
        mp.setattr(modeling_utils, "safe_open", opened)
        mp.setattr(safetensors.torch, "load_file", read)

    def reset(self) -> None:
        self.from_pretrained.clear(), self.opened.clear(), self.read.clear()

    def checkpoint_weights_touched(self, *dirs: Path) -> list[Path]:
        """Model weight files of `dirs` read by any route."""
        roots = {d.resolve() for d in dirs}
        return [p for p in [*self.opened, *self.read] if p.parent in roots and p.name.startswith("model")]


def _load_checks(loads: WeightLoads, parent: Path, base: Path) -> dict:
    return {"from_pretrained": list(loads.from_pretrained),
            "parent_files_opened": sorted({p.name for p in loads.checkpoint_weights_touched(parent)}),
            "parent_opens": len(loads.checkpoint_weights_touched(parent)),
            "base_files_touched": [p.name for p in loads.checkpoint_weights_touched(base)] if parent != base else []}


@pytest.fixture(scope="module")
def sharded(tiny_ladder, tiny_base, tmp_path_factory):  # noqa: F811
    """dense, mixed and f80 pruned with `model.max_shard_size=1MB` by the real stage, counting weight
    loads per run; then evaluated, routed and put in a manifest by the real stages."""
    root = tmp_path_factory.mktemp("sharded")
    raw = deploy_params(yaml.safe_load((tiny_ladder / "params.yaml").read_text()))
    raw["model"]["max_shard_size"] = SHARD
    raw["ladder"]["rungs"] = {k: v for k, v in raw["ladder"]["rungs"].items() if k in RUNGS}
    raw["rungs"] = RUNGS
    params = str(write_params(root / "params.yaml", raw))
    for d in ("data", "calibrate", "teacher"):
        shutil.copytree(tiny_ladder / d, root / d)
    paths = ["--base", str(tiny_base), "--data", str(root / "data"), "--calibration", str(root / "calibrate"),
             "--teacher", str(root / "teacher"), "--ladder-dir", str(root / "ladder")]
    loads = {}
    mp = pytest.MonkeyPatch()
    try:
        seam = WeightLoads(mp)
        for rung in RUNGS:
            seam.reset()
            prune.main(["--params", params, "--rung", rung, *paths])
            parent = tiny_base if rung == "dense" else root / "ladder" / raw["ladder"]["rungs"][rung]["parent"]
            loads[rung] = _load_checks(seam, parent, tiny_base)
    finally:
        mp.undo()
    build_routing(root, params, tiny_base)
    return root, loads


def test_rungs_are_written_in_shards_with_their_index_and_keep_the_weights(sharded, tiny_ladder):  # noqa: F811
    root, _ = sharded
    for rung in RUNGS:
        d = root / "ladder" / rung
        shards = sorted(p.name for p in d.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2 and not (d / "model.safetensors").exists(), (rung, shards)
        index = json.loads((d / INDEX_FILE).read_text())
        assert sorted(set(index["weight_map"].values())) == shards == weight_files(d)
        report = verify_rung(d)  # every shard and the index hashed, all present and unchanged
        assert set(shards) | {INDEX_FILE, "config.json"} <= set(report["files_sha256"])
        # sharding changes the files, not the weights: the same tensors as the one-file tiny ladder
        one_file = load_file(str(tiny_ladder / "ladder" / rung / "model.safetensors"))
        got = {k: v for s in shards for k, v in load_file(str(d / s)).items()}
        assert got.keys() == one_file.keys() and all(torch.equal(got[k], one_file[k]) for k in got)


def test_the_default_shard_size_keeps_the_tiny_ladder_in_one_file(tiny_ladder):  # noqa: F811
    for rung in ("dense", "mixed"):
        d = tiny_ladder / "ladder" / rung
        assert weight_files(d) == ["model.safetensors"] and not list(d.glob("model-*-of-*"))


def test_sharded_rungs_evaluate_and_enter_the_manifest(sharded):
    root, _ = sharded
    man = yaml.safe_load((root / "manifest.yaml").read_text())
    for r in man["rungs"]:
        m = json.loads((root / "eval" / r["name"] / "metrics.json").read_text())
        assert m["perplexity"]["perplexity"] > 0 and m["tasks"]
        report = json.loads((root / "ladder" / r["name"] / "pruning_report.json").read_text())
        assert r["files_sha256"] == report["files_sha256"] and INDEX_FILE in r["files_sha256"]
        assert m["cost"]["checkpoint_bytes"] == sum(p.stat().st_size for p in (root / "ladder" / r["name"]).glob("*.safetensors"))


def test_the_runtime_serves_sharded_rungs_as_they_were_evaluated(sharded):
    root, _ = sharded
    rt = LadderRuntime(root / "manifest.yaml")
    items = {it["id"]: it for it in map(json.loads, (root / "data" / "tasks.jsonl").read_text().splitlines())}
    served = set()
    for strategy, folder in (("router", "router"), ("cascade", "cascade")):
        decisions = [json.loads(x) for x in (root / folder / "decisions.jsonl").read_text().splitlines()]
        records = {r: {x["id"]: x for x in map(json.loads, (root / "eval" / r / "records.jsonl").read_text().splitlines())}
                   for r in RUNGS}
        for d in decisions[:12]:
            it = items[d["id"]]
            a = rt.answer(it["context"], it["choices"], strategy, task=it["task"])
            assert a.rung == d["rung"] and a.answer == records[a.rung][d["id"]]["pred_norm"], (strategy, d["id"])
            served.update(a.rungs_tried)
    assert served - {"dense"}, served  # a sharded pruned rung answered, not only dense
    assert set(rt.loaded()) == served


@pytest.fixture
def damaged(sharded, tmp_path):
    """A copy of the sharded tree (manifest paths are relative), to damage."""
    root, _ = sharded
    dst = tmp_path / "tree"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("wandb", ".wandb*"))
    return dst


def test_a_missing_shard_is_refused_naming_it(damaged):
    shard = sorted((damaged / "ladder" / "mixed").glob("model-*-of-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(AssetError, match=rf"rung mixed: {shard.name} missing from .*dvc checkout --force"):
        verify_rung(damaged / "ladder" / "mixed")
    with pytest.raises(AssetError, match=rf"rung mixed: {shard.name} missing from"):
        LadderRuntime(damaged / "manifest.yaml")
    with pytest.raises(AssetError, match=rf"{INDEX_FILE}: weight_map names {shard.name}, missing from"):
        check_checkpoint_files(damaged / "ladder" / "mixed")  # structure alone (a parent or base checkpoint)


def test_an_altered_shard_or_index_is_refused_naming_it(damaged):
    d = damaged / "ladder" / "f80"
    shard = sorted(d.glob("model-*-of-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit inside a tensor: structure intact, sha256 not
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=rf"rung f80: .*{shard.name} has sha256 .* but the manifest|"
                                            rf"rung f80: .*{shard.name} has sha256 .* build recorded"):
        LadderRuntime(damaged / "manifest.yaml")
    with pytest.raises(ChecksumError, match=rf"f80/{shard.name} has sha256"):
        verify_rung(d)


def test_an_index_naming_a_file_outside_the_build_is_refused(damaged):
    d = damaged / "ladder" / "mixed"
    index = d / INDEX_FILE
    raw = json.loads(index.read_text())
    name = next(iter(raw["weight_map"]))
    raw["weight_map"][name] = "../dense/model-00001-of-00002.safetensors"
    index.write_text(json.dumps(raw))
    with pytest.raises(AssetError, match=r"weight_map names \['\.\./dense/.*'\]: a shard must be"):
        check_checkpoint_files(d)
    with pytest.raises(ChecksumError, match=rf"{INDEX_FILE} has sha256"):  # and its digest no longer matches
        verify_rung(d)


def test_shards_without_their_index_are_refused(damaged):
    d = damaged / "ladder" / "dense"
    (d / INDEX_FILE).unlink()
    with pytest.raises(AssetError, match=rf"neither model.safetensors nor {INDEX_FILE} \(it has model-00001"):
        check_checkpoint_files(d)


def test_prune_reads_its_parents_weights_once_and_never_the_base_again(sharded, tiny_base):
    _, loads = sharded
    for rung, got in loads.items():
        assert len(got["from_pretrained"]) == 1, (rung, got)  # one model load per prune run
        shards = [p.name for p in (Path(got["from_pretrained"][0])).glob("model*.safetensors")]
        assert got["parent_files_opened"] == sorted(shards) and got["parent_opens"] == len(shards), (rung, got)
        assert got["base_files_touched"] == [], (rung, got)  # a pruned rung never reloads the base


def test_the_load_seam_sees_a_second_copy(tiny_base, monkeypatch):
    """The seam above can fail: loading the base twice is counted twice, shard by shard."""
    from transformers import AutoModelForCausalLM

    seam = WeightLoads(monkeypatch)
    for _ in range(2):
        AutoModelForCausalLM.from_pretrained(tiny_base, use_safetensors=True)
    assert len(seam.from_pretrained) == 2 and len(seam.checkpoint_weights_touched(tiny_base)) == 2


def test_the_base_stage_writes_shards_and_records_the_index(tmp_path):
    from pipeline import base

    params = write_params(tmp_path / "params.yaml", tiny_config([f"model.max_shard_size={SHARD}"]))
    base.main(["--params", str(params), "--out", str(tmp_path / "base")])
    d = tmp_path / "base"
    shards = sorted(p.name for p in d.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and weight_files(d) == shards
    check_checkpoint_files(d)  # what the next stages check before loading it
    prov = json.loads((d / "provenance.json").read_text())
    assert set(prov["weights"]) == {*shards, INDEX_FILE}


@pytest.mark.parametrize("size", ["5 GB", "5gb", "0MB", "5TB", "1.5GB"])
def test_a_bad_shard_size_is_refused_naming_the_key(size):
    raw = tiny_config()
    raw["model"]["max_shard_size"] = size
    with pytest.raises(ConfigError, match=r"model.max_shard_size"):
        validate(raw)
