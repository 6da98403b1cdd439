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
from pipeline.common.assets import AssetError
from pipeline.deploy.manifest_schema import ManifestError, validate_manifest
from pipeline.deploy.requests import RequestError
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


def test_command_line_passes_each_items_task(deployed, capsys):
    """`--items` answers each item with its own task: route-then-escalate (whose router and deferral
    both take the task) gives the stage's decisions; `--task` and a request's "task" reach the runtime."""
    from pipeline.serve import main as serve

    m = str(deployed / "manifest.yaml")
    assert serve(["--manifest", m, "--strategy", "escalate", "--items", str(deployed / "data" / "tasks.jsonl"),
                  "--split", "test"]) == 0
    answered = {a["id"]: a for a in map(json.loads, capsys.readouterr().out.splitlines())}
    decisions = [json.loads(x) for x in (deployed / "escalate" / "decisions.jsonl").read_text().splitlines()]
    assert set(answered) == {d["id"] for d in decisions}
    for d in decisions:
        assert (answered[d["id"]]["rung"], answered[d["id"]]["rungs_tried"]) == (d["rung"], d["tried"]), d["id"]
    items = [json.loads(x) for x in (deployed / "data" / "tasks.jsonl").read_text().splitlines()]
    it = next(i for i in items if i["id"] == decisions[0]["id"])
    rt = LadderRuntime(m)
    want = rt.answer(it["context"], it["choices"], "escalate", task=it["task"])
    assert serve(["--manifest", m, "--strategy", "escalate", "--task", it["task"], "--context", it["context"],
                  "--choices", *it["choices"]]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["rung"], got["rungs_tried"], got["answer"]) == (want.rung, want.rungs_tried, want.answer)
    req = json.dumps({"context": it["context"], "choices": it["choices"], "task": it["task"]})
    assert serve(["--manifest", m, "--strategy", "escalate", "--request", req]) == 0
    assert json.loads(capsys.readouterr().out)["rungs_tried"] == want.rungs_tried
    with pytest.raises(RequestError, match=r"task must be a string"):
        rt.answer(it["context"], it["choices"], "router", task=3)
    assert serve(["--manifest", m, "--request", json.dumps({"context": "Q", "choices": [" a", " b"], "task": 3})]) == 2


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
        r"schema_version is 3": lambda r: r.update(schema_version=3),
        r"router\.certificate": lambda r: r["router"].update(certificate={"epsilon": 0.05}),
        r"escalate: Field required": lambda r: r.pop("escalate"),
        r"schema_version is 1, but this runtime reads version 2 only: rebuild the manifest":
            lambda r: r.update(schema_version=1),
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
    from pipeline import base, calibrate, data, prune, teacher

    root = tmp_path / "again"
    root.mkdir()
    params = str(deployed / "deploy_params.yaml")
    raw = yaml.safe_load(open(params).read())
    c = ["--params", params]
    base.main([*c, "--out", str(root / "base")])
    data.main([*c, "--base", str(root / "base"), "--out", str(root / "data")])
    calibrate.main([*c, "--base", str(root / "base"), "--data", str(root / "data"), "--out", str(root / "calibrate")])
    teacher.main([*c, "--base", str(root / "base"), "--data", str(root / "data"), "--out", str(root / "teacher")])
    for r in raw["rungs"]:
        prune.main([*c, "--rung", r, "--base", str(root / "base"), "--data", str(root / "data"),
                    "--calibration", str(root / "calibrate"), "--teacher", str(root / "teacher"),
                    "--ladder-dir", str(root / "ladder")])
    build_routing(root, params, root / "base")
    files = ["manifest.yaml", "vllm_semantic_router.yaml", "router/router.safetensors", "router/router.json",
             "cascade/thresholds.json", "escalate/thresholds.json", "compare/table.json"]
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert {f: digest(root / f) for f in files} == {f: digest(deployed / f) for f in files}
    # Every file of every cached output up to the rungs, reports and cards included: the seconds are in
    # timings/, so a rebuild with the same result leaves DVC nothing to rerun downstream.
    for out, first in [("base", tiny_base), ("data", deployed / "data"), ("calibrate", deployed / "calibrate"),
                       ("teacher", deployed / "teacher"), *[(f"ladder/{r}", deployed / "ladder" / r) for r in raw["rungs"]]]:
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in (root / out).iterdir()), out
        assert {n: digest(root / out / n) for n in names} == {n: digest(first / n) for n in names}, out
    assert json.loads((root / "timings" / "prune" / "f80.json").read_text())["total"] > 0
    # measured timings differ between the two builds; the manifest carries none under the analytic cost
    man = yaml.safe_load((root / "manifest.yaml").read_text())
    assert man["costs"]["kind"] == "flops" and all(r["latency_ms"] is None for r in man["rungs"])


# --- the runtime trusts only what it verified ---------------------------------------------------


def _copy(deployed, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(deployed, root, ignore=shutil.ignore_patterns("eval", "data", "calibrate"))
    return root


def _edit_manifest(root, edit):
    raw = yaml.safe_load((root / "manifest.yaml").read_text())
    edit(raw)
    (root / "manifest.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_manifest_hashes_every_file_a_rung_loads_from(deployed):
    from pipeline.models.checkpoint import DOCUMENTATION

    m = yaml.safe_load((deployed / "manifest.yaml").read_text())
    for r in m["rungs"]:
        on_disk = {p.name for p in (deployed / r["path"]).iterdir()} - DOCUMENTATION
        assert set(r["files_sha256"]) == on_disk
        assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors"} <= on_disk


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "model.safetensors"])
def test_runtime_refuses_any_modified_rung_file(deployed, tmp_path, name):
    root = _copy(deployed, tmp_path)
    f = root / "ladder" / "f80" / name
    if name.endswith(".json"):  # an edit that still parses: only the hash can tell
        f.write_text(f.read_text().replace("{", '{"edited": 1, ', 1))
    else:
        blob = bytearray(f.read_bytes())
        blob[-3] ^= 0x01
        f.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match=rf"rung f80: .*{name} has sha256 [0-9a-f]{{64}}, but the build recorded"):
        LadderRuntime(root / "manifest.yaml")


def test_runtime_refuses_files_the_build_did_not_write(deployed, tmp_path):
    root = _copy(deployed, tmp_path)
    (root / "ladder" / "mixed" / "added_tokens.json").write_text('{"<evil>": 5}')
    with pytest.raises(ChecksumError, match=r"rung mixed: added_tokens.json in .* were not written by the build"):
        LadderRuntime(root / "manifest.yaml")


def test_runtime_rechecks_a_rung_before_loading_it(deployed, tmp_path):
    root = _copy(deployed, tmp_path)
    rt = LadderRuntime(root / "manifest.yaml")
    cfg = root / "ladder" / "nm24" / "config.json"
    cfg.write_text(cfg.read_text().replace('"rms_norm_eps"', '"rms_norm_eps": 0.5, "_was_rms_norm_eps"'))
    with pytest.raises(ChecksumError, match=r"rung nm24: .*config.json has sha256"):
        rt.answer("Question: why?\nAnswer:", [" yes", " no"], "rung=nm24")
    assert "nm24" not in rt.loaded()


def test_cascade_router_and_escalate_settings_come_from_the_checked_files(deployed, tmp_path):
    rt = LadderRuntime(deployed / "manifest.yaml")
    th = json.loads((deployed / "cascade" / "thresholds.json").read_text())
    assert (rt.cascade.order, rt.cascade.thresholds, rt.cascade.signal) == (th["order"], th["thresholds"],
                                                                            th["deferral"]["signal"])
    assert rt.cascade.deferral.to_json() == th["deferral"]  # the deferral rule is the checked file's
    assert rt.router_meta == json.loads((deployed / "router" / "router.json").read_text())
    esc = json.loads((deployed / "escalate" / "thresholds.json").read_text())
    assert (rt.escalate.threshold, rt.escalate.candidates) == (esc["threshold"], esc["candidates"])
    cases = {
        r"cascade.thresholds is \[0.0.*in the manifest but .* in .*thresholds.json":
            lambda m: m["cascade"].update(thresholds=[0.0] * len(m["cascade"]["thresholds"])),
        r"cascade.order is": lambda m: m["cascade"].update(order=list(reversed(m["cascade"]["order"][:-1])) + ["dense"]),
        r"cascade.signal is 'margin'": lambda m: m["cascade"].update(signal="margin"),
        r"cascade.deferral is 'signal'": lambda m: m["cascade"].update(deferral="signal"),
        r"prediction is 'acc'": lambda m: m.update(prediction="acc"),
        r"router.threshold is 0.0 in the manifest but": lambda m: m["router"].update(threshold=0.0),
        r"router.candidates is \[\] in the manifest but": lambda m: m["router"].update(candidates=[]),
        r"rungs\[mixed\].relative_cost is 0.5": lambda m: m["rungs"][1].update(relative_cost=0.5),
        r"escalate.threshold is 1.0 in the manifest but .* in .*escalate/thresholds.json":
            lambda m: m["escalate"].update(threshold=1.0),
        r"escalate.certificate.epsilon is 0.9 in the manifest":
            lambda m: m["escalate"]["certificate"].update(epsilon=0.9),
    }
    for pattern, edit in cases.items():
        root = _copy(deployed, tmp_path / pattern[:14].replace("\\", "").replace("[", ""))
        _edit_manifest(root, edit)
        with pytest.raises(ManifestError, match=pattern + r".*rebuild it with `dvc repro manifest`"):
            LadderRuntime(root / "manifest.yaml")
    # The escalate file is hashed like the others: an edit that still parses is refused.
    root = _copy(deployed, tmp_path / "escalate_edit")
    f = root / "escalate" / "thresholds.json"
    f.write_text(f.read_text().replace('"threshold"', '"edited": 1, "threshold"', 1))
    with pytest.raises(ChecksumError, match=r"route-then-escalate thresholds: .*escalate/thresholds.json has sha256"):
        LadderRuntime(root / "manifest.yaml")


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m["rungs"][1].update(path="../../../../etc"), r"rungs.1.path: '../../../../etc' leaves the manifest"),
    (lambda m: m["rungs"][1].update(path="/etc"), r"rungs.1.path: '/etc' leaves the manifest"),
    (lambda m: m["cascade"].update(path="cascade/../../x/thresholds.json"), r"cascade.path: .* leaves the manifest"),
    (lambda m: m["router"].update(weights="../router/router.safetensors"), r"router.weights: .* not a plain file name"),
    (lambda m: m["rungs"][0]["files_sha256"].update({"../../passwd": "0" * 64}), r"not a plain file name"),
])
def test_manifest_paths_cannot_leave_its_directory(deployed, tmp_path, edit, pattern):
    root = _copy(deployed, tmp_path)
    _edit_manifest(root, edit)
    with pytest.raises(ManifestError, match=pattern):
        LadderRuntime(root / "manifest.yaml")


def test_a_symlinked_rung_outside_the_manifest_directory_is_refused(deployed, tmp_path):
    root = _copy(deployed, tmp_path)
    shutil.rmtree(root / "ladder" / "f80")
    (root / "ladder" / "f80").symlink_to(deployed / "ladder" / "f80")  # same files, outside `root`
    with pytest.raises(ManifestError, match=r"rung f80 path 'ladder/f80' resolves to .* outside the manifest"):
        LadderRuntime(root / "manifest.yaml")


def test_weights_load_only_from_safetensors(deployed, tmp_path):
    import ast
    from pathlib import Path

    import torch

    from pipeline.common.assets import sha256_file

    # A pickle under the safetensors name, even with a matching digest in the manifest, is refused.
    root = _copy(deployed, tmp_path)
    w = root / "ladder" / "f80" / "model.safetensors"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, w)
    _edit_manifest(root, lambda m: m["rungs"][2]["files_sha256"].update({"model.safetensors": sha256_file(w)}))
    with pytest.raises(AssetError, match=r"f80/model.safetensors: not a safetensors file .*torch.save"):
        LadderRuntime(root / "manifest.yaml")
    # Every model load in the pipeline asks for safetensors (the GGUF route in models/source.py passes
    # gguf_file instead, through **kw; a GGUF file holds plain arrays). Tokenizers and configs read no weights.
    for path in Path(__file__).resolve().parents[1].joinpath("pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"
                    and not any(k in ast.unparse(node.func.value) for k in ("Tokenizer", "Config"))):
                kws = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kws.get("use_safetensors"), ast.Constant) and kws["use_safetensors"].value is True
                assert ok or (path.name == "source.py" and None in kws), f"{path}:{node.lineno}: {ast.unparse(node)}"


def test_runtime_bounds_requests(deployed):
    import time

    from pipeline.serve import main as serve

    rt = LadderRuntime(deployed / "manifest.yaml")
    ctx = "Question: Which gas do plants take in?\nAnswer:"
    t0 = time.perf_counter()
    with pytest.raises(RequestError, match=r"the limit is serve\.max_(request_bytes|choice_tokens)="):
        rt.answer(ctx, [" carbon dioxide", "x" * 100_000], "cascade")  # the request
    with pytest.raises(RequestError, match=r"choice 1 is \d+ tokens; the limit is serve.max_choice_tokens=256"):
        rt.answer(ctx, [" carbon dioxide", "x" * 30_000], "cascade")
    assert rt.limits == rt.manifest.serve  # the limits the manifest carries
    with pytest.raises(RequestError, match=rf"limit is serve.max_request_bytes={rt.limits.max_request_bytes}"):
        rt.answer(ctx, [" a", "word " * (rt.limits.max_request_bytes // 5 + 10)], "rung=dense")
    with pytest.raises(RequestError, match=r"limit is serve.max_choices=16"):
        rt.answer(ctx, [f" {i}" for i in range(40)], "router")
    assert time.perf_counter() - t0 < 60  # refused, not scored (it ran 8.5 minutes before)
    long = rt.answer("word " * 3000 + ctx, [" carbon dioxide", " helium"], "rung=dense")
    assert long.context_tokens_cut > 0  # cut from the left, and said so
    short = rt.answer(ctx, [" carbon dioxide", " helium"], "rung=dense")
    assert short.context_tokens_cut == 0
    with pytest.raises(RequestError, match=r"choice 1 is empty"):
        rt.answer(ctx, [" a", ""], "cascade")
    with pytest.raises(ValueError, match=r"no rung 'nope'"):
        rt.answer(ctx, [" a", " b"], "rung=nope")
    # The command line: the same refusals, exit status 2, and argument checks.
    m = str(deployed / "manifest.yaml")
    assert serve(["--manifest", m, "--context", "Q\udcff", "--choices", " a", " b"]) == 2  # non-UTF-8 argv byte
    assert serve(["--manifest", m, "--request", '{"context": "Q", "choices": [" a", ""]}']) == 2
    for bad in (["--split", "tset"], ["--limit", "-1"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as exc:
            serve(["--manifest", m, "--items", str(deployed / "data" / "tasks.jsonl"), *bad])
        assert exc.value.code == 2
