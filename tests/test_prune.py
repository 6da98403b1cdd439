"""calibrate + prune stages on the tiny preset: loadable rungs, nesting, reports, bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline import calibrate, data, prune, teacher
from pipeline.common.config import ConfigError, validate
from tests.conftest import tiny_config, write_params

RUNGS = ["mixed", "f80", "wanda50", "nm24", "wanda60", "sgpt60"]


@pytest.fixture(scope="session")
def tiny_ladder(tiny_base, tmp_path_factory) -> Path:
    """The tiny ladder built by the real stage entry points, plus a nested weight rung."""
    root = tmp_path_factory.mktemp("ladder")
    raw = tiny_config()
    raw["ladder"]["rungs"]["wanda60"] = {"parent": "wanda50",
                                         "recipe": {"weights": {"method": "wanda", "sparsity": 0.6}}}
    # SparseGPT updates the weights it keeps: nested on a 2:4 parent it must keep the parent's zeros.
    raw["ladder"]["rungs"]["sgpt60"] = {"parent": "nm24",
                                        "recipe": {"weights": {"method": "sparsegpt", "sparsity": 0.6}}}
    raw["rungs"] += ["wanda60", "sgpt60"]
    params = str(write_params(root / "params.yaml", raw))
    common = ["--params", params]
    data.main([*common, "--base", str(tiny_base), "--out", str(root / "data")])
    calibrate.main([*common, "--base", str(tiny_base), "--data", str(root / "data"), "--out", str(root / "calibrate")])
    teacher.main([*common, "--base", str(tiny_base), "--data", str(root / "data"), "--out", str(root / "teacher")])
    paths = ["--base", str(tiny_base), "--data", str(root / "data"), "--calibration", str(root / "calibrate"),
             "--teacher", str(root / "teacher"), "--ladder-dir", str(root / "ladder")]
    for rung in ["dense", *RUNGS]:
        prune.main([*common, "--rung", rung, *paths])
    return root


def report(root: Path, rung: str) -> dict:
    return json.loads((root / "ladder" / rung / "pruning_report.json").read_text())


def test_calibration_outputs(tiny_ladder):
    imp = load_file(str(tiny_ladder / "calibrate" / "importance.safetensors"))
    assert imp["head"].shape == (4, 4) and imp["kv_group"].shape == (4, 2) and imp["mlp_channel"].shape == (4, 128)
    assert imp["hidden_channel"].shape == (64,) and imp["norm_input_ms"].shape == (2 * 4 + 1, 64)
    assert imp["down_in_ms"].shape == (4, 128) and imp["o_in_ms"].shape == (4, 4 * 16)
    assert torch.all(imp["block_influence"] > 0) and torch.all(imp["head"] >= 0)
    # A KV group's score is the sum of its query heads'.
    torch.testing.assert_close(imp["kv_group"], imp["head"].view(4, 2, 2).sum(-1))
    summary = json.loads((tiny_ladder / "calibrate" / "summary.json").read_text())
    assert summary["tokens"] == 10 * 64 and "seconds" not in summary  # timings live outside the output
    assert json.loads((tiny_ladder / "timings" / "calibrate.json").read_text())["hooked_pass"] > 0
    assert json.loads((tiny_ladder / "timings" / "teacher.json").read_text())["topk_pass"] >= 0
    t = json.loads((tiny_ladder / "teacher" / "summary.json").read_text())
    assert t["topk"] == 8 and t["sets"]["heal"]["shape"] == [6, 64] and t["sets"]["allocator"]["shape"] == [2, 64]
    assert (tiny_ladder / "calibrate" / "importance.png").stat().st_size > 1000


def test_teacher_skips_the_healing_set_when_no_rung_heals(tiny_base, tiny_ladder, tmp_path):
    raw = tiny_config()
    raw["ladder"]["heal"]["enabled"] = False
    params = str(write_params(tmp_path / "params.yaml", raw))
    teacher.main(["--params", params, "--base", str(tiny_base), "--data", str(tiny_ladder / "data"),
                  "--out", str(tmp_path / "teacher")])
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == ["allocator.safetensors", "summary.json"]
    t = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert t["heal_sets"] is False and list(t["sets"]) == ["allocator"]
    # The allocator's cache does not depend on whether the ladder heals.
    assert load_file(str(tmp_path / "teacher" / "allocator.safetensors"))["topk_ids"].equal(
        load_file(str(tiny_ladder / "teacher" / "allocator.safetensors"))["topk_ids"])


@pytest.mark.parametrize("rung", ["dense", *RUNGS])
def test_every_rung_loads_generates_and_is_documented(tiny_ladder, rung):
    d = tiny_ladder / "ladder" / rung
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    rep = report(tiny_ladder, rung)
    c = rep["counts"]
    assert model.config.num_hidden_layers == c["layers"] == len(model.model.layers)
    assert model.config.num_key_value_heads == c["kv_heads"]
    assert model.config.num_attention_heads == c["kv_heads"] * c["q_heads"]
    assert model.config.intermediate_size == c["mlp"] and model.config.hidden_size == c["hidden"]
    out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    for f in ("recipe.yaml", "README.md", "model.safetensors", "tokenizer.json"):
        assert (d / f).exists(), f
    # Weight pruning never touches the embedding or the (tied) lm_head (the base's padding row is zero).
    dense = report(tiny_ladder, "dense")["module_sparsity"]
    for m in ("model.embed_tokens", "lm_head"):
        assert rep["module_sparsity"][m] < 1e-4 and (c["hidden"] < 64 or rep["module_sparsity"][m] == dense[m])
    assert rep["smoke"]["completion"].strip() and rep["smoke"]["completion"].strip() in (d / "README.md").read_text()
    assert rep["params"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_mixed_rung_follows_its_recipe(tiny_ladder):
    rep = report(tiny_ladder, "mixed")
    assert rep["counts"] == {"layers": 3, "hidden": 56, "kv_heads": 2, "q_heads": 1, "mlp": 96}
    imp = load_file(str(tiny_ladder / "calibrate" / "importance.safetensors"))
    assert rep["layers_removed"] == [int(imp["block_influence"].argmin())]  # the least influential layer
    assert rep["relative"]["flops"] < 1.0


def test_budget_rung_meets_target_and_logs_its_choices(tiny_ladder):
    rep = report(tiny_ladder, "f80")
    assert rep["relative"]["flops"] <= 0.80
    assert rep["allocator_trace"][0]["move"] == "start" and len(rep["allocator_trace"]) > 1
    assert {m["move"] for m in rep["allocator_trace"][1:]} <= {"layers", "hidden", "kv_heads", "q_heads", "mlp"}
    assert rep["allocator_trace"][-1]["cost"] == pytest.approx(rep["relative"]["flops"])  # plan = built model
    comp = rep["compensation"]
    assert comp["compensation"].startswith("least squares") or comp["compensation"].startswith("none needed")
    for r in comp["layers"]:
        assert r["error_after"] <= r["error_before"] + 1e-9, r


def _weights(root: Path, rung: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "ladder" / rung / "model.safetensors"))


@pytest.mark.parametrize("child,parent", [("mixed", "dense"), ("f80", "mixed")])
def test_nested_structured_rungs_are_subnetworks(tiny_ladder, child, parent):
    from pipeline.pruning.plan import is_nested
    from pipeline.pruning.structure import Arch, Structure

    arch = Arch.from_config(json.loads((tiny_ladder / "ladder" / "dense" / "config.json").read_text()))
    ps = Structure.from_json(report(tiny_ladder, parent)["structure"], arch)
    cs = Structure.from_json(report(tiny_ladder, child)["structure"], arch)
    assert is_nested(cs, ps) == []  # every granularity's kept units inside the parent's
    assert is_nested(ps, cs) != [] or child == parent
    # Healing freezes the tied embeddings: the child's are the parent's kept columns, exactly.
    pw, cw = _weights(tiny_ladder, parent), _weights(tiny_ladder, child)
    cols = [ps["hidden"].index(c) for c in cs["hidden"]]
    assert torch.equal(cw["model.embed_tokens.weight"], pw["model.embed_tokens.weight"][:, cols])


@pytest.mark.parametrize("child,parent", [("wanda60", "wanda50"), ("sgpt60", "nm24")])
def test_nested_weight_rung_keeps_parent_zeros(tiny_ladder, child, parent):
    pw, cw = _weights(tiny_ladder, parent), _weights(tiny_ladder, child)
    for name, w in cw.items():
        if ".layers." in name and w.dim() == 2:
            assert not bool(((pw[name] == 0) & (w != 0)).any()), name  # zero in parent => zero in child
    assert report(tiny_ladder, child)["nonzero_params"] < report(tiny_ladder, parent)["nonzero_params"]


def test_nm_rung_pattern_holds_exactly(tiny_ladder):
    for name, w in _weights(tiny_ladder, "nm24").items():
        if ".layers." in name and name.endswith("proj.weight"):
            assert int((w != 0).view(w.shape[0], -1, 4).sum(-1).max()) <= 2, name


def test_owl_gives_different_layer_sparsities(tiny_ladder):
    rep = report(tiny_ladder, "wanda50")
    per_layer = [rep["module_sparsity"][f"model.layers.{i}.mlp.up_proj"] for i in range(4)]
    assert max(per_layer) - min(per_layer) > 0.05, per_layer
    assert abs(sum(per_layer) / 4 - 0.5) < 0.02


def test_owl_threshold_comes_from_the_recipe(tiny_ladder):
    """`owl_m` in a recipe changes the outlier ratios (it used to be ignored for calibrate's default)."""
    from pipeline.pruning.importance import Importance, owl_outlier_ratios

    imp = Importance.from_tensors(load_file(str(tiny_ladder / "calibrate" / "importance.safetensors")))
    model = AutoModelForCausalLM.from_pretrained(tiny_ladder / "ladder" / "dense").eval()
    r3, r8 = (owl_outlier_ratios(model, [0, 1, 2, 3], imp, m) for m in (3.0, 8.0))
    assert bool((r3 > r8).all())
    steps = {k: v for s in __import__("yaml").safe_load((tiny_ladder / "ladder" / "wanda50" / "recipe.yaml")
                                                        .read_text())["steps"] for k, v in s.items()}
    assert steps["weights"]["owl_m"] == 5.0 and len(steps["weights"]["owl_outlier_ratio"]) == 4


@pytest.mark.parametrize("override,key", [
    ("ladder.rungs.wanda50.recipe.weights.sparsity=1.5", "ladder.rungs.wanda50.recipe.weights.sparsity"),
    ("ladder.rungs.nm24.recipe.weights.pattern='3:2'", "ladder.rungs.nm24.recipe.weights.pattern"),
    ("ladder.rungs.f80.parent=nm24", "ladder.rungs"),  # parent must come earlier
    ("ladder.rungs.nm24.recipe.weights.method=obs", "ladder.rungs.nm24.recipe.weights.method"),
])
def test_bad_recipes_fail_validation_naming_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        validate(tiny_config([override]))
    assert f"  {key}" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("override,match", [
    ("ladder.rungs.mixed.recipe.attention.kv_heads=5", r"ladder.rungs.mixed.recipe.attention.kv_heads: out of range"),
    ("ladder.rungs.mixed.recipe.layers.drop=4", r"ladder.rungs.mixed.recipe.layers.drop: out of range"),
])
def test_impossible_recipes_fail_before_loading_a_model(tiny_ladder, tmp_path, override, match, monkeypatch):
    params = write_params(tmp_path / "params.yaml", tiny_config([override]))
    loaded = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit, match=match):
        prune.main(["--params", str(params), "--rung", "mixed", "--ladder-dir", str(tiny_ladder / "ladder"),
                    "--base", str(tiny_ladder / "ladder" / "dense")])
    assert not loaded


def test_child_less_pruned_than_parent_is_refused(tiny_ladder, tmp_path):
    raw = tiny_config()
    raw["ladder"]["rungs"]["wider"] = {"parent": "mixed", "recipe": {"mlp": {"keep": 1.0}}}
    raw["rungs"].append("wider")
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(SystemExit, match="sub-network of its parent"):
        prune.main(["--params", str(params), "--rung", "wider", "--ladder-dir", str(tiny_ladder / "ladder"),
                    "--base", str(tiny_ladder / "ladder" / "dense")])


def test_healing_runs_in_the_tiny_ladder_and_is_reported(tiny_ladder):
    for rung in ("mixed", "f80", "wanda50"):
        h = report(tiny_ladder, rung)["heal"]
        assert h["curve"][0]["step"] == 0 and h["steps_run"] >= 2 and h["frozen_embeddings"], rung
        assert h["val_kl_best"] <= h["val_kl_before"]
