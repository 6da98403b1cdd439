"""Granularities on tiny random llamas: exact removals, compensation, emulation, cost, extension."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline.models.cost import model_cost
from pipeline.pruning.compensation import refit
from pipeline.pruning.cut import cut_to
from pipeline.pruning.granularity import total_flops, total_params
from pipeline.pruning.importance import measure_importance
from pipeline.pruning.sparsity import magnitude_prune
from pipeline.pruning.structure import Arch, Structure

H, KV, HD, D, I, L, V = 6, 2, 8, 48, 48, 4, 128  # 3 query heads per KV head


def tiny(seed: int = 0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=KV, head_dim=HD, tie_word_embeddings=True,
                      max_position_embeddings=64, **kw)
    # float64: removal is exact in exact arithmetic; what is left is summation order (~1e-16).
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()


def assert_same(a, b, atol=1e-12, rtol=0.0):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


X = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(1))
BLOCKS = torch.randint(0, V, (8, 16), generator=torch.Generator().manual_seed(2))


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()


def structure(arch: Arch, **units) -> Structure:
    s = Structure.dense(arch)
    for k, v in units.items():
        s = s.replace(k, v)
    return s


def cut(m, target, compensate=False, blocks=None, imp=None, bias=False, depth=None):
    arch = Arch.from_config(m.config)
    return cut_to(m, Structure.dense(arch), target, arch, imp, blocks, compensate, 0.0, bias, depth=depth)


def test_removing_zero_query_heads_is_exact(tmp_path):
    m = tiny()
    with torch.no_grad():  # zero the o_proj columns of query heads 1 and 4: their output is gone
        for layer in m.model.layers:
            for h in (1, 4):
                layer.self_attn.o_proj.weight[:, h * HD:(h + 1) * HD] = 0
    before = logits(m)
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, q_heads={l: [0, 2, 3, 5] for l in range(L)}))
    assert_same(logits(m), before)
    r = roundtrip(m, tmp_path)
    assert (r.config.num_attention_heads, r.config.num_key_value_heads, r.config.head_dim) == (4, 2, HD)
    assert_same(logits(r), before)


def test_removing_a_zero_kv_group_is_exact(tmp_path):
    m = tiny()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[:, 3 * HD:6 * HD] = 0  # query heads 3..5 read KV head 1
    before = logits(m)
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, kv_heads={l: [0] for l in range(L)}, q_heads={l: [0, 1, 2] for l in range(L)}))
    r = roundtrip(m, tmp_path)
    assert (r.config.num_attention_heads, r.config.num_key_value_heads) == (3, 1)
    assert_same(logits(r), before)


def test_removing_zero_mlp_channels_is_exact(tmp_path):
    m = tiny()
    drop = [0, 7, 30, 47]
    with torch.no_grad():
        for layer in m.model.layers:
            layer.mlp.down_proj.weight[:, drop] = 0
    before = logits(m)
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, mlp={l: [c for c in range(I) if c not in drop] for l in range(L)}))
    r = roundtrip(m, tmp_path)
    assert r.config.intermediate_size == I - len(drop)
    assert_same(logits(r), before)


def test_removing_zero_hidden_channels_leaves_outputs_unchanged(tmp_path):
    m = tiny()
    drop = [3, 10, 11, 25, 40, 47]  # 42 channels: transformers wants hidden % heads == 0 (6 heads)
    with torch.no_grad():  # a residual channel nothing writes to and nothing reads is always zero
        m.model.embed_tokens.weight[:, drop] = 0
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[drop, :] = 0
            layer.mlp.down_proj.weight[drop, :] = 0
    before = logits(m)
    imp = measure_importance(m, BLOCKS, desc="stats")
    assert float(imp.hidden_channel[drop].max()) == 0.0  # scored as useless
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, hidden=[c for c in range(D) if c not in drop]), imp=imp)
    r = roundtrip(m, tmp_path)
    assert r.config.hidden_size == D - len(drop) and r.lm_head.weight is r.model.embed_tokens.weight
    # RMSNorm computes in float32 whatever the model dtype: exact up to float32 rounding.
    assert_same(logits(r), before, atol=1e-5, rtol=1e-5)


def test_dropping_an_identity_layer_is_exact_and_renumbers(tmp_path):
    m = tiny()
    with torch.no_grad():  # a layer whose residual branches write nothing is the identity
        m.model.layers[2].self_attn.o_proj.weight.zero_()
        m.model.layers[2].mlp.down_proj.weight.zero_()
    before = logits(m)
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, layers=[0, 1, 3]))
    assert [layer.self_attn.layer_idx for layer in m.model.layers] == [0, 1, 2]
    r = roundtrip(m, tmp_path)
    assert r.config.num_hidden_layers == 3
    assert_same(logits(r), before)
    # The KV cache is indexed by layer_idx: cached generation must match a full recompute.
    prompt = X[:1, :6]
    out = r.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    seq = prompt
    for _ in range(6):
        seq = torch.cat([seq, logits(r, seq)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, seq)


def kl_to(parent_logits, model, x):
    p = parent_logits.log_softmax(-1)
    return float((p.exp() * (p - logits(model, x).log_softmax(-1))).sum(-1).mean())


def test_depth_compensation_reproduces_a_layer_that_adds_nothing():
    m = tiny()
    with torch.no_grad():  # layer 2 is the identity: the fit must give layer 1 its own weights back
        m.model.layers[2].self_attn.o_proj.weight.zero_()
        m.model.layers[2].mlp.down_proj.weight.zero_()
    before, w = logits(m), m.model.layers[1].mlp.down_proj.weight.clone()
    rep = cut(m, structure(Arch.from_config(m.config), layers=[0, 1, 3]), depth=(BLOCKS, 0.0))
    [r] = rep["depth"]["layers"]
    assert r["layer"] == 1 and r["dropped_after"] == 1 and r["error_after"] < 1e-12
    assert_same(m.model.layers[1].mlp.down_proj.weight, w, atol=1e-9)
    assert_same(logits(m), before, atol=1e-9)


def test_depth_compensation_recovers_part_of_what_a_dropped_run_added():
    parent = tiny()
    ref = logits(parent, BLOCKS[:2])
    target = structure(Arch.from_config(parent.config), layers=[0, 3])  # drop the run 1, 2
    plain, fitted, ridged = tiny(), tiny(), tiny()
    for m in (plain, fitted, ridged):
        m.load_state_dict(parent.state_dict())
    cut(plain, target)
    rep = cut(fitted, target, depth=(BLOCKS, 0.01))
    [r] = rep["depth"]["layers"]
    assert r["dropped_after"] == 2 and r["error_after"] < r["error_before"]
    assert kl_to(ref, fitted, BLOCKS[:2]) < kl_to(ref, plain, BLOCKS[:2])
    # The ridge pulls towards the layer's own weights: a huge damping changes nothing.
    cut(ridged, target, depth=(BLOCKS, 1e12))
    assert_same(logits(ridged), logits(plain), atol=1e-6)


def test_depth_compensation_skips_layers_before_the_first_kept_one_and_composes_with_width(tmp_path):
    m = tiny()
    arch = Arch.from_config(m.config)
    imp = measure_importance(m, BLOCKS, desc="stats")
    target = structure(arch, layers=[1, 3], hidden=[c for c in range(D) if c % 8 != 3],
                       mlp={l: list(range(I - 8)) for l in range(L)})
    rep = cut(m, target, compensate=True, blocks=BLOCKS, imp=imp, depth=(BLOCKS, 0.1))
    assert [r["layer"] for r in rep["depth"]["layers"]] == [1]  # layer 0 is gone with nothing before it
    r = roundtrip(m, tmp_path)
    assert r.config.num_hidden_layers == 2 and r.config.hidden_size == D - 6
    assert torch.isfinite(logits(r)).all()


def test_gqa_grouping_preserved_when_heads_differ_per_layer(tmp_path):
    m = tiny()
    keep_q = [[0, 2, 3, 4], [1, 2, 4, 5], [0, 1, 3, 5], [0, 2, 4, 5]]
    with torch.no_grad():
        for layer, q in zip(m.model.layers, keep_q):
            for h in set(range(H)) - set(q):
                layer.self_attn.o_proj.weight[:, h * HD:(h + 1) * HD] = 0
    before = logits(m)
    arch = Arch.from_config(m.config)
    cut(m, structure(arch, q_heads=dict(enumerate(keep_q))))
    assert_same(logits(roundtrip(m, tmp_path)), before)


def test_refit_is_exact_when_removed_inputs_are_combinations_of_kept_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :2] @ torch.randn(2, 3, generator=g, dtype=torch.float64)], 1)  # 3 dependent inputs
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    gram = z.T @ z / len(z)
    w = torch.randn(5, 9, generator=g, dtype=torch.float64)
    r = refit(w, None, gram, torch.arange(6), damping=0.0, fit_bias=False)
    assert r.error_before > 0.01 and r.error_after < 1e-12
    torch.testing.assert_close(x[:, :6] @ r.weight.T, x @ w.T)


def test_compensation_makes_removing_duplicate_heads_and_channels_exact():
    m = tiny()
    with torch.no_grad():
        for layer in m.model.layers:
            q = layer.self_attn.q_proj.weight  # query head 1 = head 0, head 4 = head 3 (same KV heads)
            q[HD:2 * HD] = q[:HD]
            q[4 * HD:5 * HD] = q[3 * HD:4 * HD]
            p = layer.mlp  # MLP channel 5 = channel 2: identical activations
            p.gate_proj.weight[5] = p.gate_proj.weight[2]
            p.up_proj.weight[5] = p.up_proj.weight[2]
    before = logits(m)
    arch = Arch.from_config(m.config)
    target = structure(arch, q_heads={l: [0, 2, 3, 5] for l in range(L)},
                       mlp={l: [c for c in range(I) if c != 5] for l in range(L)})
    sliced = tiny()
    sliced.load_state_dict(m.state_dict())
    cut(sliced, target)
    assert not torch.allclose(logits(sliced), before, atol=1e-3)  # slicing alone loses them
    rep = cut(m, target, compensate=True, blocks=BLOCKS)
    assert rep["compensation"].startswith("least squares") and len(rep["layers"]) == 2 * L
    for r in rep["layers"]:
        assert r["error_after"] < 1e-12 < r["error_before"], r
    assert_same(logits(m), before, atol=1e-9)


def test_bias_compensation_loads_with_plain_from_pretrained_in_a_fresh_process(tmp_path):
    m = tiny(dtype=torch.float32)
    arch = Arch.from_config(m.config)
    target = structure(arch, mlp={l: list(range(0, I, 2)) for l in range(L)},
                       q_heads={l: [0, 1, 3, 4] for l in range(L)})
    rep = cut(m, target, compensate=True, blocks=BLOCKS, bias=True)
    assert rep["bias"] == ["mlp.down_proj", "self_attn.o_proj"]
    assert m.config.attention_bias and m.config.mlp_bias
    assert float(m.model.layers[0].mlp.down_proj.bias.detach().abs().sum()) > 0
    expected = logits(m)
    m.save_pretrained(tmp_path)
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, use_safetensors=True).eval()\n"
        "out = m.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)\n"
        f"x = torch.tensor({X.tolist()})\n"
        "torch.save(m(input_ids=x).logits, sys.argv[1])\n"
        "assert out.shape == (1, 7)\n"
    )
    out_file = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", code, str(out_file)], check=True, capture_output=True)
    torch.testing.assert_close(torch.load(out_file), expected.float())


def test_emulation_computes_what_the_cut_model_computes():
    """The allocator scores candidates with hooks and weight swaps; they must equal the real cut."""
    from pipeline.pruning.allocator import Emulator

    m = tiny()
    imp = measure_importance(m, BLOCKS, desc="stats")
    arch = Arch.from_config(m.config)
    target = structure(arch, layers=[0, 2, 3], hidden=[c for c in range(D) if c % 6 != 1],
                       kv_heads={l: [1] for l in range(L)}, q_heads={l: [3, 5] for l in range(L)},
                       mlp={l: list(range(8, I)) for l in range(L)})
    emulate = Emulator(m, Structure.dense(arch), arch, imp, None, compensate=False, damping=0.0)
    with emulate(target):
        emulated = logits(m)
    after_hooks = logits(m)
    cut(m, target, imp=imp)
    assert_same(logits(m), emulated, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after_hooks, emulated)  # the hooks and swaps were undone


def test_granularity_costs_match_the_cut_model():
    m = tiny()
    imp = measure_importance(m, BLOCKS, desc="stats")
    arch = Arch.from_config(m.config)
    dense = Structure.dense(arch).counts()
    c = model_cost(m, context=256)
    assert total_flops(dense, arch, 256) == c["flops_per_token"]
    assert total_params(dense, arch) == c["params"]
    target = structure(arch, layers=[0, 1, 3], hidden=list(range(40)), q_heads={l: [0, 1, 3, 4] for l in range(L)},
                       mlp={l: list(range(40)) for l in range(L)})
    cut(m, target, imp=imp)
    c = model_cost(m, context=256)
    assert total_flops(target.counts(), arch, 256) == c["flops_per_token"]
    assert total_params(target.counts(), arch) == c["params"]


def test_cost_counters_on_known_shapes():
    m = tiny()
    ctx = 256
    proj = D * HD * (H + KV + KV + H) + 3 * D * I  # q, k, v, o, gate, up, down
    expected = L * (2 * proj + 4 * H * HD * ctx) + 2 * V * D
    c = model_cost(m, context=ctx)
    assert c["flops_per_token"] == expected
    assert c["params"] == V * D + L * (proj + 2 * D) + D  # tied embedding once; norms included
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[:, :10] = 0
    c2 = model_cost(m, context=ctx)
    assert c2["nonzero_params"] == c["nonzero_params"] - 10 * I
    assert c2["nonzero_flops_per_token"] == c["nonzero_flops_per_token"] - 2 * 10 * I
    assert c2["flops_per_token"] == c["flops_per_token"]  # zeros cost the same on dense kernels


def test_magnitude_nm_masks_hold_exactly():
    m = tiny()
    magnitude_prune(m, [0.5] * L, (2, 4))
    for layer in m.model.layers:
        for lin in (layer.self_attn.q_proj, layer.mlp.down_proj):
            nz = (lin.weight != 0).view(lin.weight.shape[0], -1, 4).sum(-1)
            assert int(nz.max()) <= 2
    assert int(m.lm_head.weight.count_nonzero()) == m.lm_head.weight.numel()


def test_magnitude_unstructured_sparsity_per_row():
    m = tiny()
    magnitude_prune(m, [0.25, 0.5, 0.5, 0.75], None)
    for layer, s in zip(m.model.layers, [0.25, 0.5, 0.5, 0.75]):
        w = layer.mlp.up_proj.weight
        assert abs(1 - int(w.count_nonzero()) / w.numel() - s) < 0.02
