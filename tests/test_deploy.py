"""Router, cascade and manifest stages on the tiny ladder; the runtime reproduces their decisions."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from pipeline import cascade, compare, escalate, evaluate, manifest, router, speed
from pipeline.deploy.manifest_schema import ManifestError, validate_manifest
from pipeline.serve import ChecksumError, LadderRuntime
from tests.conftest import write_params
from tests.test_prune import tiny_ladder  # noqa: F401  (session fixture)


def build_routing(root, params: str, base) -> None:
    """evaluate@every rung, speed, router, cascade, escalate, compare, manifest: the real entry points."""
    raw = yaml.safe_load(open(params).read())
    common = ["--params", params]
    ladder = ["--ladder-dir", str(root / "ladder")]
    for rung in raw["rungs"]:
        evaluate.main([*common, "--rung", rung, *ladder, "--data", str(root / "data"), "--out", str(root / "eval" / rung)])
    speed.main([*common, *ladder, "--out", str(root / "speed" / "speed.json")])
    where = [*ladder, "--eval-dir", str(root / "eval"), "--speed", str(root / "speed" / "speed.json")]
    router.main([*common, *where, "--data", str(root / "data"), "--out", str(root / "router")])
    cascade.main([*common, *where, "--out", str(root / "cascade")])
    escalate.main([*common, *where, "--router", str(root / "router"), "--cascade", str(root / "cascade"),
                   "--out", str(root / "escalate")])
    compare.main([*common, *where, "--router", str(root / "router"), "--cascade", str(root / "cascade"),
                  "--escalate", str(root / "escalate"), "--out", str(root / "compare")])
    manifest.main([*common, "--base", str(base), *where, "--router", str(root / "router"),
                   "--cascade", str(root / "cascade"), "--escalate", str(root / "escalate"),
                   "--out", str(root / "manifest.yaml"), "--vllm-sr-out", str(root / "vllm_semantic_router.yaml")])


def deploy_params(raw: dict) -> dict:
    """A budget router and the quantile cascade, so both send real traffic to cheap rungs of a
    random model, and a loose epsilon for route-then-escalate, so Learn-then-Test certifies a
    threshold that starts queries below dense (the bound itself is tested on synthetic data)."""
    raw = copy.deepcopy(raw)
    raw["router"].update({"target": "budget", "budget": 0.97, "epochs": 60, "knn_k": [5], "logistic_l2": [10.0]})
    raw["cascade"].update({"method": "quantile", "rungs": ["mixed", "f95"], "epsilon": 0.5, "delta": 0.5})
    return raw


@pytest.fixture(scope="module")
def deployed(tiny_ladder, tiny_base):  # noqa: F811
    """Every rung evaluated, then the routing stages and the manifest, by the real stage entry points."""
    root = tiny_ladder
    raw = deploy_params(yaml.safe_load((root / "params.yaml").read_text()))
    params = str(write_params(root / "deploy_params.yaml", raw))
    build_routing(root, params, tiny_base)
    return root


def test_stage_outputs(deployed):
    r = json.loads((deployed / "router" / "metrics.json").read_text())
    assert r["certified"]["calibration_cost"] <= 0.97 + 1e-9  # the budget held where it was chosen
    assert r["cost_kind"] == "flops" and r["relative_cost"]["dense"] == 1.0
    assert r["model"]["chosen"] in r["model"]["cv_log_loss"] and "task_rate" in r["model"]["cv_log_loss"]
    # unstructured / N:M rungs cost what dense costs: never router candidates
    assert not {"wanda50", "wanda60", "nm24"} & set(r["candidates"])
    t = r["test"]
    for key in ("always_dense", "always_cheapest", "random_matched_cost", "oracle", "single_rung_hull",
                "router_minus_random", "router_minus_hull"):
        assert key in t
    acc = t["router"]["accuracy"]
    assert acc["lo"] <= acc["value"] <= acc["hi"]  # every figure carries its interval
    assert t["oracle"]["accuracy"]["value"] >= max(v["accuracy"]["value"] for v in t["single_rungs"].values())
    c = json.loads((deployed / "cascade" / "metrics.json").read_text())
    assert c["order"][-1] == "dense" and set(c["order"]) <= {"mixed", "f95", "dense"}
    q = c["test"]["quantile"]
    assert sum(q["share_answered"].values()) == pytest.approx(1.0)
    assert q["bound_held"] == (q["drop"]["value"] <= 0.5)
    assert set(c["deferral_cv"]) == {"mixed", "f95"}
    e = json.loads((deployed / "escalate" / "metrics.json").read_text())
    assert e["certified"]["threshold"] is None or e["ltt"]["rejected"] >= 1
    table = json.loads((deployed / "compare" / "table.json").read_text())
    assert {"dense", "router", "cascade", "route-then-escalate", "oracle", "random at the router's cost",
            "single-rung hull at the router's cost"} <= set(table["rows"])
    assert table["rows"]["router"]["accuracy"] == t["router"]["accuracy"]  # same decisions, same resamples
    for d in ("router", "cascade", "escalate"):
        assert (deployed / d / "curves.png").stat().st_size > 1000
        band = (deployed / d / "band.csv").read_text().splitlines()
        assert band[0] == "relative_cost,accuracy,accuracy_lo,accuracy_hi" and len(band) > 2
    assert not list(deployed.glob("router/*.pkl")) and (deployed / "router" / "router.safetensors").exists()
    sp = json.loads((deployed / "speed" / "speed.json").read_text())
    assert set(sp["rungs"]) == set(r["rung_cost"]) and sp["rungs"]["dense"]["relative_query_ms"] == 1.0


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
    with pytest.raises(ChecksumError, match=r"rung mixed: .*model.safetensors has sha256 .* manifest records"):
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
        r"rungs\.0\.weights_sha256\.model\.safetensors: String should match pattern":
            lambda r: r["rungs"][0]["weights_sha256"].update({"model.safetensors": "abc"}),
        r"cascade\.delta: Input should be less than or equal to 1": lambda r: r["cascade"].update(delta=3),
        r"schema_version is 2": lambda r: r.update(schema_version=2),
        r"build\.surprise: Extra inputs are not permitted": lambda r: r["build"].update(surprise=1),
        r"thresholds for": lambda r: r["cascade"]["thresholds"].append(0.5),
    }
    for pattern, edit in cases.items():
        with pytest.raises(ManifestError, match=pattern):
            validate_manifest(broken(edit))
