"""Structured removal on a tiny random llama: valid configs, exact equivalences, bookkeeping."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline.pruning.slicing import drop_layers, prune_heads, prune_mlp
from pipeline.pruning.sparsity import magnitude_prune

H, KV, HD = 6, 2, 8  # 3 query heads per KV head


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=H, num_key_value_heads=KV, head_dim=HD, tie_word_embeddings=True,
                      max_position_embeddings=64)
    # float64: removal is exact in exact arithmetic; in float64 the only difference
    # left is summation order inside smaller matmuls (~1e-16), far below any real change.
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()


def assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


X = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def logits(model, x=X):
    with torch.no_grad():
        return model(input_ids=x, use_cache=False).logits


def roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path)
    return AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()


def test_removing_zero_query_heads_is_exact(tmp_path):
    m = tiny()
    # Zero the o_proj input columns of query heads 1 and 4 in every layer: their output is gone.
    with torch.no_grad():
        for layer in m.model.layers:
            for h in (1, 4):
                layer.self_attn.o_proj.weight[:, h * HD:(h + 1) * HD] = 0
    before = logits(m)
    prune_heads(m, keep_q=[[0, 2, 3, 5]] * 4, keep_kv=[[0, 1]] * 4)
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
    prune_heads(m, keep_q=[[0, 1, 2]] * 4, keep_kv=[[0]] * 4)
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
    keep = [c for c in range(48) if c not in drop]
    prune_mlp(m, [keep] * 4)
    r = roundtrip(m, tmp_path)
    assert r.config.intermediate_size == 44
    assert_same(logits(r), before)


def test_dropping_an_identity_layer_is_exact_and_renumbers(tmp_path):
    m = tiny()
    with torch.no_grad():  # a layer whose residual branches write nothing is the identity
        m.model.layers[2].self_attn.o_proj.weight.zero_()
        m.model.layers[2].mlp.down_proj.weight.zero_()
    before = logits(m)
    drop_layers(m, [2])
    assert [l.self_attn.layer_idx for l in m.model.layers] == [0, 1, 2]
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


def test_gqa_grouping_preserved_when_heads_differ_per_layer(tmp_path):
    m = tiny()
    keep_q = [[0, 2, 3, 4], [1, 2, 4, 5], [0, 1, 3, 5], [0, 2, 4, 5]]
    keep_kv = [[0, 1]] * 4
    with torch.no_grad():
        for layer, q in zip(m.model.layers, keep_q):
            for h in set(range(H)) - set(q):
                layer.self_attn.o_proj.weight[:, h * HD:(h + 1) * HD] = 0
    before = logits(m)
    prune_heads(m, keep_q, keep_kv)
    assert_same(logits(roundtrip(m, tmp_path)), before)


@pytest.mark.parametrize("keep_q,keep_kv,match", [
    ([[0, 1, 2, 3]] * 4, [[0]] * 4, "do not split evenly"),  # head 3 belongs to KV head 1
    ([[0, 3]] * 3 + [[0, 1, 3, 4]], [[0, 1]] * 4, "uniform"),
    ([[0, 1, 3]] * 4, [[0, 1]] * 4, "multiple"),
])
def test_invalid_head_sets_are_refused(keep_q, keep_kv, match):
    with pytest.raises(ValueError, match=match):
        prune_heads(tiny(), keep_q, keep_kv)


def test_magnitude_nm_masks_hold_exactly():
    m = tiny()
    magnitude_prune(m, [0.5] * 4, (2, 4))
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


def test_cost_counters_on_known_shapes():
    from pipeline.models.cost import config_flops_per_token, model_cost

    m = tiny()
    hidden, inter, L, vocab, ctx = 48, 48, 4, 128, 256
    proj = hidden * HD * (H + KV + KV + H) + 3 * hidden * inter  # q, k, v, o, gate, up, down
    expected = L * (2 * proj + 4 * H * HD * ctx) + 2 * vocab * hidden
    c = model_cost(m, context=ctx)
    assert c["flops_per_token"] == expected == config_flops_per_token(L, hidden, H, KV, HD, inter, vocab, ctx)
    # Params: tied embedding counted once; norms included.
    assert c["params"] == vocab * hidden + L * (proj + 2 * hidden) + hidden
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[:, :10] = 0
    c2 = model_cost(m, context=ctx)
    assert c2["nonzero_params"] == c["nonzero_params"] - 10 * inter
    assert c2["nonzero_flops_per_token"] == c["nonzero_flops_per_token"] - 2 * 10 * inter
    assert c2["flops_per_token"] == c["flops_per_token"]  # zeros cost the same on dense kernels


def test_allocator_cost_model_matches_the_pruned_model():
    from pipeline.models.cost import model_cost
    from pipeline.pruning.allocator import BaseShape, Counts

    m = tiny()
    base = BaseShape.from_config(m.config)
    drop_layers(m, [1])
    prune_heads(m, keep_q=[[0, 1, 3, 4]] * 3, keep_kv=[[0, 1]] * 3)
    prune_mlp(m, [list(range(40))] * 3)
    counts = Counts(layers=3, kv_heads=2, q_per_kv=2, mlp=40)
    c = model_cost(m)
    assert counts.flops(base) == c["flops_per_token"]
    assert counts.params(base) == c["params"]
