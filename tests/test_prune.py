"""calibrate + prune stages on the tiny preset: loadable rungs, nesting, reports, bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pipeline import calibrate, data, prune
from pipeline.common.config import ConfigError, validate
from tests.conftest import tiny_config, write_params

RUNGS = ["mixed", "f95", "wanda50", "nm24", "wanda60"]


@pytest.fixture(scope="session")
def tiny_ladder(tiny_base, tmp_path_factory) -> Path:
    """The tiny ladder built by the real stage entry points, plus a nested weight rung."""
    root = tmp_path_factory.mktemp("ladder")
    raw = tiny_config()
    raw["ladder"]["rungs"]["wanda60"] = {"parent": "wanda50",
                                         "recipe": {"weights": {"method": "wanda", "sparsity": 0.6}}}
    raw["rungs"].append("wanda60")
    params = str(write_params(root / "params.yaml", raw))
    common = ["--params", params]
    data.main([*common, "--base", str(tiny_base), "--out", str(root / "data")])
    calibrate.main([*common, "--base", str(tiny_base), "--data", str(root / "data"), "--out", str(root / "calibrate")])
    paths = ["--base", str(tiny_base), "--data", str(root / "data"), "--calibration", str(root / "calibrate"),
             "--ladder-dir", str(root / "ladder")]
    for rung in ["dense", *RUNGS]:
        prune.main([*common, "--rung", rung, *paths])
    return root


def report(root: Path, rung: str) -> dict:
    return json.loads((root / "ladder" / rung / "pruning_report.json").read_text())


def test_calibration_outputs(tiny_ladder):
    imp = load_file(str(tiny_ladder / "calibrate" / "importance.safetensors"))
    assert imp["head"].shape == (4, 4) and imp["kv_group"].shape == (4, 2) and imp["mlp_channel"].shape == (4, 128)
    assert torch.all(imp["block_influence"] > 0) and torch.all(imp["head"] >= 0)
    # A KV group's score is the sum of its query heads'.
    torch.testing.assert_close(imp["kv_group"], imp["head"].view(4, 2, 2).sum(-1))
    summary = json.loads((tiny_ladder / "calibrate" / "summary.json").read_text())
    assert summary["tokens"] == 8 * 64 and summary["seconds"]["plain_forward"] > 0
    assert (tiny_ladder / "calibrate" / "importance.png").stat().st_size > 1000


@pytest.mark.parametrize("rung", ["dense", *RUNGS])
def test_every_rung_loads_generates_and_is_documented(tiny_ladder, rung):
    d = tiny_ladder / "ladder" / rung
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    rep = report(tiny_ladder, rung)
    c = rep["counts"]
    assert model.config.num_hidden_layers == c["layers"] == len(model.model.layers)
    assert model.config.num_key_value_heads == c["kv_heads"]
    assert model.config.num_attention_heads == c["kv_heads"] * c["q_per_kv"]
    assert model.config.intermediate_size == c["mlp"]
    out = model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    for f in ("recipe.yaml", "README.md", "model.safetensors", "tokenizer.json"):
        assert (d / f).exists(), f
    # Pruning never touches the embedding or the (tied) lm_head (the base's padding row is zero).
    dense = report(tiny_ladder, "dense")["module_sparsity"]
    for m in ("model.embed_tokens", "lm_head"):
        assert rep["module_sparsity"][m] == dense[m] < 1e-4
    assert rep["params"] == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_mixed_rung_follows_its_recipe(tiny_ladder):
    rep = report(tiny_ladder, "mixed")
    assert rep["counts"] == {"layers": 3, "kv_heads": 2, "q_per_kv": 1, "mlp": 96}
    imp = load_file(str(tiny_ladder / "calibrate" / "importance.safetensors"))
    assert rep["layers_removed"] == [int(imp["block_influence"].argmin())]  # the least influential layer
    assert rep["relative"]["flops"] < 1.0


def test_budget_rung_meets_target_and_logs_its_choices(tiny_ladder):
    rep = report(tiny_ladder, "f95")
    assert rep["relative"]["flops"] <= 0.95
    assert rep["allocator_trace"][0]["move"] == "start" and len(rep["allocator_trace"]) > 1
    assert {m["move"] for m in rep["allocator_trace"][1:]} <= {"layers", "kv_heads", "q_heads", "mlp"}


def _weights(root: Path, rung: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "ladder" / rung / "model.safetensors"))


def test_nested_structured_rungs_are_subnetworks(tiny_ladder):
    parent, child = report(tiny_ladder, "mixed"), report(tiny_ladder, "f95")
    ps, cs = parent["structure"], child["structure"]
    assert set(cs["layers"]) <= set(ps["layers"])
    for l in map(str, cs["layers"]):
        assert set(cs["q"][l]) <= set(ps["q"][l]) and set(cs["kv"][l]) <= set(ps["kv"][l])
        assert set(cs["mlp"][l]) <= set(ps["mlp"][l])
    # The child's weights are slices of the parent's: check one MLP matrix exactly.
    pw, cw = _weights(tiny_ladder, "mixed"), _weights(tiny_ladder, "f95")
    l = cs["layers"][0]
    pi, ci = ps["layers"].index(l), cs["layers"].index(l)
    rows = [ps["mlp"][str(l)].index(c) for c in cs["mlp"][str(l)]]
    assert torch.equal(cw[f"model.layers.{ci}.mlp.up_proj.weight"], pw[f"model.layers.{pi}.mlp.up_proj.weight"][rows])


def test_nested_weight_rung_keeps_parent_zeros(tiny_ladder):
    pw, cw = _weights(tiny_ladder, "wanda50"), _weights(tiny_ladder, "wanda60")
    for name, w in cw.items():
        if ".layers." in name and w.dim() == 2:
            assert not bool(((pw[name] == 0) & (w != 0)).any()), name  # zero in parent => zero in child
    assert report(tiny_ladder, "wanda60")["nonzero_params"] < report(tiny_ladder, "wanda50")["nonzero_params"]


def test_nm_rung_pattern_holds_exactly(tiny_ladder):
    for name, w in _weights(tiny_ladder, "nm24").items():
        if ".layers." in name and name.endswith("proj.weight"):
            assert int((w != 0).view(w.shape[0], -1, 4).sum(-1).max()) <= 2, name


def test_owl_gives_different_layer_sparsities(tiny_ladder):
    rep = report(tiny_ladder, "wanda50")
    per_layer = [rep["module_sparsity"][f"model.layers.{i}.mlp.up_proj"] for i in range(4)]
    assert max(per_layer) - min(per_layer) > 0.05, per_layer
    assert abs(sum(per_layer) / 4 - 0.5) < 0.02


@pytest.mark.parametrize("override,key", [
    ("ladder.rungs.wanda50.recipe.weights.sparsity=1.5", "ladder.rungs.wanda50.recipe.weights.sparsity"),
    ("ladder.rungs.nm24.recipe.weights.pattern='3:2'", "ladder.rungs.nm24.recipe.weights.pattern"),
    ("ladder.rungs.f95.parent=nm24", "ladder.rungs"),  # parent must come earlier
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


def test_healing_distills_and_keeps_zeros(tiny_ladder, tmp_path):
    raw = tiny_config(["ladder.heal.enabled=true", "ladder.heal.steps=3", "ladder.heal.lr=0.001"])
    raw["ladder"]["rungs"] = {"healed": {"parent": "dense", "recipe": {
        "mlp": {"keep": 0.5}, "weights": {"method": "magnitude", "sparsity": 0.5}}}}
    raw["rungs"] = ["dense", "healed"]
    params = write_params(tmp_path / "params.yaml", raw)
    ladder_dir = tmp_path / "ladder"
    (ladder_dir).mkdir()
    import shutil

    shutil.copytree(tiny_ladder / "ladder" / "dense", ladder_dir / "dense")
    prune.main(["--params", str(params), "--rung", "healed", "--base", str(tiny_ladder / "ladder" / "dense"),
                "--data", str(tiny_ladder / "data"), "--calibration", str(tiny_ladder / "calibrate"),
                "--ladder-dir", str(ladder_dir)])
    import yaml

    steps = yaml.safe_load((ladder_dir / "healed" / "recipe.yaml").read_text())["steps"]
    heal = next(s["heal"] for s in steps if "heal" in s)
    assert heal["steps"] == 3 and heal["kl_last"] >= 0
    rep = json.loads((ladder_dir / "healed" / "pruning_report.json").read_text())
    # Healing must not refill pruned weights: up_proj stays at the magnitude step's 50%.
    assert abs(rep["module_sparsity"]["model.layers.0.mlp.up_proj"] - 0.5) < 0.01
    assert rep["counts"]["mlp"] == 64
