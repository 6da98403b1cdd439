"""Router, cascade and manifest stages on the tiny ladder; the runtime reproduces their decisions."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from pipeline import cascade, evaluate, manifest, router
from pipeline.deploy.manifest_schema import ManifestError, validate_manifest
from pipeline.serve import ChecksumError, LadderRuntime
from tests.conftest import write_params
from tests.test_prune import tiny_ladder  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def deployed(tiny_ladder, tiny_base):  # noqa: F811
    """Every rung evaluated, then router, cascade and manifest, by the real stage entry points.

    FLOPs as the cost (deterministic, unlike tiny latencies); a budget router and the quantile
    cascade, so both send real traffic to cheap rungs on a random model."""
    root = tiny_ladder
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["evaluate"]["routing_cost"] = "flops"
    raw["router"].update({"target": "budget", "budget": 0.97, "epochs": 60})  # cheapest rung: 0.94
    raw["cascade"].update({"method": "quantile", "rungs": ["mixed", "f95"], "epsilon": 0.1})
    params = str(write_params(root / "deploy_params.yaml", raw))
    common = ["--params", params]
    for rung in raw["rungs"]:
        evaluate.main([*common, "--rung", rung, "--ladder-dir", str(root / "ladder"), "--data", str(root / "data"),
                       "--out", str(root / "eval" / rung)])
    router.main([*common, "--eval-dir", str(root / "eval"), "--ladder-dir", str(root / "ladder"),
                 "--data", str(root / "data"), "--out", str(root / "router")])
    cascade.main([*common, "--eval-dir", str(root / "eval"), "--out", str(root / "cascade")])
    manifest.main([*common, "--base", str(tiny_base), "--ladder-dir", str(root / "ladder"),
                   "--eval-dir", str(root / "eval"), "--router", str(root / "router"),
                   "--cascade", str(root / "cascade"), "--out", str(root / "manifest.yaml"),
                   "--vllm-sr-out", str(root / "vllm_semantic_router.yaml")])
    return root


def test_stage_outputs(deployed):
    r = json.loads((deployed / "router" / "metrics.json").read_text())
    assert r["calibration"]["calibration_cost"] <= 0.97 + 1e-9  # the budget held where it was chosen
    for key in ("always_dense", "always_cheapest", "random_matched_cost", "oracle", "single_rung_hull"):
        assert key in r["test"]
    assert r["test"]["oracle"]["accuracy"] >= max(v["accuracy"] for v in r["test"]["single_rungs"].values())
    c = json.loads((deployed / "cascade" / "metrics.json").read_text())
    assert c["order"][-1] == "dense" and set(c["order"]) <= {"mixed", "f95", "dense"}
    q = c["test"]["quantile"]
    assert sum(q["share_answered"].values()) == pytest.approx(1.0)
    assert q["bound_held"] == (q["drop"] <= 0.1)
    for d in ("router", "cascade"):
        assert (deployed / d / "curves.png").stat().st_size > 1000
    sr = yaml.safe_load((deployed / "vllm_semantic_router.yaml").read_text())
    assert sr["version"] == "v0.3" and sr["routing"]["decisions"][0]["algorithm"]["type"] == "confidence"
    assert not list(deployed.glob("router/*.pkl")) and (deployed / "router" / "router.safetensors").exists()


def test_runtime_reproduces_router_and_cascade_decisions_on_the_test_split(deployed):
    rt = LadderRuntime(deployed / "manifest.yaml")
    assert rt.loaded() == []  # lazy: nothing loaded before a query needs it
    items = {it["id"]: it for it in map(json.loads, (deployed / "data" / "tasks.jsonl").read_text().splitlines())}
    records = {r: {x["id"]: x for x in map(json.loads, (deployed / "eval" / r / "records.jsonl").read_text().splitlines())}
               for r in rt.manifest.cascade.order + ["dense"]}
    non_dense = 0
    for strategy in ("router", "cascade"):
        decisions = [json.loads(x) for x in (deployed / strategy / "decisions.jsonl").read_text().splitlines()]
        assert decisions and all(items[d["id"]]["split"] == "test" for d in decisions)
        for d in decisions:
            it = items[d["id"]]
            a = rt.answer(it["context"], it["choices"], strategy)
            assert a.rung == d["rung"], (strategy, d["id"])
            if strategy == "cascade":
                assert a.rungs_tried == [r for r in d["tried"]
                                         if r == a.rung or rt.manifest.cascade.thresholds[
                                             rt.manifest.cascade.order.index(r)] is not None]
                assert a.answer == records[a.rung][d["id"]]["pred_norm"]
            non_dense += a.rung != "dense"
    assert non_dense > 0  # the check is not only "everything went to dense"


def test_runtime_refuses_a_tampered_file(deployed, tmp_path):
    copy_root = tmp_path / "artifacts"
    shutil.copytree(deployed, copy_root, ignore=shutil.ignore_patterns("eval", "data", "calibrate"))
    LadderRuntime(copy_root / "manifest.yaml")  # intact: accepted
    weights = copy_root / "ladder" / "mixed" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit pattern in the last byte
    weights.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match=r"rung mixed: .*model.safetensors has sha256 .* build recorded"):
        LadderRuntime(copy_root / "manifest.yaml")
    rc = __import__("pipeline.serve", fromlist=["main"]).main(["--manifest", str(copy_root / "manifest.yaml"),
                                                               "--context", "Q", "--choices", " a", " b"])
    assert rc == 2


def test_manifest_schema_rejects_missing_or_wrong_fields(deployed):
    good = yaml.safe_load((deployed / "manifest.yaml").read_text())
    m = validate_manifest(good)
    assert [r.name for r in m.rungs][0] == "dense" and m.cascade.order[-1] == "dense"
    assert len(m.build.git_revision) > 0 and "torch" in m.build.libraries

    def broken(edit):
        raw = copy.deepcopy(good)
        edit(raw)
        return raw

    cases = {
        r"router\.weights_sha256: Field required": lambda r: r["router"].pop("weights_sha256"),
        r"rungs\.1\.params: Input should be a valid integer": lambda r: r["rungs"][1].update(params="many"),
        r"rungs\.0\.files_sha256\.model\.safetensors: String should match pattern":
            lambda r: r["rungs"][0]["files_sha256"].update({"model.safetensors": "abc"}),
        r"cascade\.delta: Input should be less than or equal to 1": lambda r: r["cascade"].update(delta=3),
        r"schema_version is 1, but this runtime reads version 2 only: rebuild the manifest":
            lambda r: r.update(schema_version=1),
        r"build\.surprise: Extra inputs are not permitted": lambda r: r["build"].update(surprise=1),
        r"thresholds for": lambda r: r["cascade"]["thresholds"].append(0.5),
    }
    for pattern, edit in cases.items():
        with pytest.raises(ManifestError, match=pattern):
            validate_manifest(broken(edit))
