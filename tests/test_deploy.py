"""Router, cascade and manifest stages on the tiny ladder; the runtime reproduces their decisions."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    raw["cascade"].update({"method": "quantile", "rungs": ["mixed", "f80"], "epsilon": 0.5, "delta": 0.5})
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
    assert c["order"][-1] == "dense" and set(c["order"]) <= {"mixed", "f80", "dense"}
    q = c["test"]["quantile"]
    assert sum(q["share_answered"].values()) == pytest.approx(1.0)
    assert q["bound_held"] == (q["drop"]["value"] <= 0.5)
    assert set(c["deferral_cv"]) == {"mixed", "f80"}
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


def test_runtime_reproduces_every_strategy_on_the_test_split(deployed):
    rt = LadderRuntime(deployed / "manifest.yaml")
    assert rt.loaded() == []  # lazy: nothing loaded before a query needs it
    items = {it["id"]: it for it in map(json.loads, (deployed / "data" / "tasks.jsonl").read_text().splitlines())}
    records = {r.name: {x["id"]: x for x in map(json.loads, (deployed / "eval" / r.name / "records.jsonl").read_text().splitlines())}
               for r in rt.manifest.rungs}
    for strategy, folder in (("router", "router"), ("cascade", "cascade"), ("escalate", "escalate")):
        decisions = [json.loads(x) for x in (deployed / folder / "decisions.jsonl").read_text().splitlines()]
        assert decisions and all(items[d["id"]]["split"] == "test" for d in decisions)
        non_dense = 0
        for d in decisions:
            it = items[d["id"]]
            a = rt.answer(it["context"], it["choices"], strategy, task=it["task"])
            assert a.rung == d["rung"], (strategy, d["id"])
            assert a.rungs_tried == d.get("tried", [d["rung"]]), (strategy, d["id"])
            assert a.answer == records[a.rung][d["id"]]["pred_norm"]
            non_dense += a.rungs_tried[0] != "dense"
        assert non_dense > 0, strategy  # the check is not only "everything went to dense"


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
        r"schema_version is 3": lambda r: r.update(schema_version=3),
        r"router\.certificate": lambda r: r["router"].update(certificate={"epsilon": 0.05}),
        r"escalate: Field required": lambda r: r.pop("escalate"),
        r"build\.surprise: Extra inputs are not permitted": lambda r: r["build"].update(surprise=1),
        r"thresholds for": lambda r: r["cascade"]["thresholds"].append(0.5),
    }
    for pattern, edit in cases.items():
        with pytest.raises(ManifestError, match=pattern):
            validate_manifest(broken(edit))


def vllm_sr() -> Path:
    """The `vllm-sr` CLI of the test environment (a dev dependency: `make setup` installs it)."""
    exe = os.environ.get("VLLM_SR") or shutil.which("vllm-sr", path=str(Path(sys.executable).parent)) or shutil.which("vllm-sr")
    if not exe:
        pytest.fail("vllm-sr is not installed in this environment: run `make setup` (it is in the dev extras), "
                    "or point VLLM_SR at its executable")
    return Path(exe)


def test_semantic_router_config_passes_its_own_validator_and_its_decisions_fire(deployed, tmp_path):
    exe = vllm_sr()
    path = deployed / "vllm_semantic_router.yaml"
    res = subprocess.run([str(exe), "config", "validate", "--config", str(path)], capture_output=True, text=True)
    assert res.returncode == 0 and "Configuration is valid" in res.stdout, res.stdout + res.stderr
    # The validator can fail: the previous export's fields are rejected.
    sr = yaml.safe_load(path.read_text())
    old = copy.deepcopy(sr)
    old["providers"]["defaults"] = {"default_model": old["providers"]["defaults"]["model"]}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    bad = subprocess.run([str(exe), "config", "validate", "--config", str(tmp_path / "old.yaml")], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "default_model" in bad.stdout + bad.stderr
    # SR's own parser: the last decision is a match-all (AND over no conditions; OR over none never
    # matches), every other decision keys on a metadata signal the file declares.
    probe = ("import json, sys; from cli.parser import parse_user_config; c = parse_user_config(sys.argv[1], "
             "log_summary=False); print(json.dumps([[d.name, d.rules.operator, [x.name for x in d.rules.conditions], "
             "[m.model for m in d.modelRefs]] for d in c.decisions]))")
    out = subprocess.run([str(exe.parent / "python"), "-c", probe, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    decisions = json.loads(out.stdout)
    catch_all = decisions[-1]
    assert catch_all[1].upper() == "AND" and catch_all[2] == []
    declared = {m["name"] for m in sr["routing"]["signals"]["metadata"]}
    assert all(d[1].upper() == "AND" and d[2] and set(d[2]) <= declared for d in decisions[:-1])
    names = [m["name"] for m in sr["providers"]["models"]]
    endpoints = [m["backend_refs"][0]["endpoint"] for m in sr["providers"]["models"]]
    assert len(set(endpoints)) == len(names)  # every rung its own backend
    man = yaml.safe_load((deployed / "manifest.yaml").read_text())
    assert [m["pricing"]["prompt_per_1m"] for m in sr["providers"]["models"]] == pytest.approx(
        [r["relative_cost"] for r in man["rungs"]], abs=1e-6)  # prices from the cost model
    assert "RE-CALIBRATE" in path.read_text()


@pytest.mark.e2e
def test_two_builds_give_byte_identical_router_thresholds_and_manifest(deployed, tiny_base, tmp_path):
    """A second build from scratch (base to manifest) with the same config and seed."""
    from pipeline import base, calibrate, data, prune

    root = tmp_path / "again"
    root.mkdir()
    params = str(deployed / "deploy_params.yaml")
    raw = yaml.safe_load(open(params).read())
    c = ["--params", params]
    base.main([*c, "--out", str(root / "base")])
    data.main([*c, "--base", str(root / "base"), "--out", str(root / "data")])
    calibrate.main([*c, "--base", str(root / "base"), "--data", str(root / "data"), "--out", str(root / "calibrate")])
    for r in raw["rungs"]:
        prune.main([*c, "--rung", r, "--base", str(root / "base"), "--data", str(root / "data"),
                    "--calibration", str(root / "calibrate"), "--ladder-dir", str(root / "ladder")])
    build_routing(root, params, root / "base")
    files = ["manifest.yaml", "vllm_semantic_router.yaml", "router/router.safetensors", "router/router.json",
             "cascade/thresholds.json", "escalate/thresholds.json", "compare/table.json"]
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert {f: digest(root / f) for f in files} == {f: digest(deployed / f) for f in files}
    # measured timings differ between the two builds; the manifest carries none under the analytic cost
    man = yaml.safe_load((root / "manifest.yaml").read_text())
    assert man["costs"]["kind"] == "flops" and all(r["latency_ms"] is None for r in man["rungs"])
