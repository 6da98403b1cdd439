"""Router, cascade and manifest stages on the tiny ladder; the runtime reproduces their decisions."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from pipeline import cascade, evaluate, manifest, router
from pipeline.common.assets import AssetError
from pipeline.deploy.manifest_schema import ManifestError, validate_manifest
from pipeline.deploy.requests import RequestError
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
    f = root / "ladder" / "f95" / name
    if name.endswith(".json"):  # an edit that still parses: only the hash can tell
        f.write_text(f.read_text().replace("{", '{"edited": 1, ', 1))
    else:
        blob = bytearray(f.read_bytes())
        blob[-3] ^= 0x01
        f.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match=rf"rung f95: .*{name} has sha256 [0-9a-f]{{64}}, but the build recorded"):
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


def test_cascade_and_router_settings_come_from_the_checked_files(deployed, tmp_path):
    rt = LadderRuntime(deployed / "manifest.yaml")
    th = json.loads((deployed / "cascade" / "thresholds.json").read_text())
    assert (rt.cascade.order, rt.cascade.thresholds, rt.cascade.signal) == (th["order"], th["thresholds"], th["signal"])
    assert rt.router_meta == json.loads((deployed / "router" / "router.json").read_text())
    cases = {
        r"cascade.thresholds is \[0.0.*in the manifest but .* in .*thresholds.json":
            lambda m: m["cascade"].update(thresholds=[0.0] * len(m["cascade"]["thresholds"])),
        r"cascade.order is": lambda m: m["cascade"].update(order=list(reversed(m["cascade"]["order"][:-1])) + ["dense"]),
        r"cascade.signal is 'margin'": lambda m: m["cascade"].update(signal="margin"),
        r"prediction is 'acc'": lambda m: m.update(prediction="acc"),
        r"router.threshold is 0.0 in the manifest but": lambda m: m["router"].update(threshold=0.0),
        r"rungs\[mixed\].relative_cost is 0.5": lambda m: m["rungs"][1].update(relative_cost=0.5),
    }
    for pattern, edit in cases.items():
        root = _copy(deployed, tmp_path / pattern[:12].replace("\\", "").replace("[", ""))
        _edit_manifest(root, edit)
        with pytest.raises(ManifestError, match=pattern + r".*rebuild it with `dvc repro manifest`"):
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
    shutil.rmtree(root / "ladder" / "f95")
    (root / "ladder" / "f95").symlink_to(deployed / "ladder" / "f95")  # same files, outside `root`
    with pytest.raises(ManifestError, match=r"rung f95 path 'ladder/f95' resolves to .* outside the manifest"):
        LadderRuntime(root / "manifest.yaml")


def test_weights_load_only_from_safetensors(deployed, tmp_path):
    import ast
    from pathlib import Path

    import torch

    from pipeline.common.assets import sha256_file

    # A pickle under the safetensors name, even with a matching digest in the manifest, is refused.
    root = _copy(deployed, tmp_path)
    w = root / "ladder" / "f95" / "model.safetensors"
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, w)
    _edit_manifest(root, lambda m: m["rungs"][2]["files_sha256"].update({"model.safetensors": sha256_file(w)}))
    with pytest.raises(AssetError, match=r"f95/model.safetensors: not a safetensors file .*torch.save"):
        LadderRuntime(root / "manifest.yaml")
    # Every model load in the pipeline asks for safetensors (the GGUF route in models/source.py passes
    # gguf_file instead, through **kw; a GGUF file holds plain arrays).
    for path in Path(__file__).resolve().parents[1].joinpath("pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained" and "Tokenizer" not in ast.unparse(node.func.value)):
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
