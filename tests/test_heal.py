"""Healing by distillation from a cached teacher: it recovers, and it keeps structure and zeros."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pipeline.pruning.cut import cut_to
from pipeline.pruning.distill import captured_mass, sparse_kl, teacher_topk
from pipeline.pruning.heal import heal, lr_at
from pipeline.pruning.sparsity import magnitude_prune
from pipeline.pruning.structure import Arch, Structure
from tests.test_structured import I, L, tiny

CFG = SimpleNamespace(tokens=32 * 4 * 32, batch_size=4, lr=3e-3, warmup=0.1, weight_decay=0.0, eval_every=4,
                      patience=50, freeze_embeddings=True)


def blocks(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 128, (n, 32), generator=torch.Generator().manual_seed(seed))


def test_sparse_kl_is_the_kl_when_the_top_k_holds_all_the_mass():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(3, 5, 10, generator=g), torch.randn(3, 5, 10, generator=g)
    top = t.log_softmax(-1).topk(10, dim=-1)
    exact = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(sparse_kl(s, top.indices, top.values), exact, atol=1e-5, rtol=1e-5)
    top4 = t.log_softmax(-1).topk(4, dim=-1)  # a partial top-k still gives a non-negative KL
    assert bool((sparse_kl(s, top4.indices, top4.values) >= -1e-6).all())


def test_learning_rate_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 0.1) for s in range(100)]
    assert lrs[0] < lrs[9] == 1.0 and lrs[-1] < 0.15 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_healing_recovers_and_keeps_structure_zeros_and_embeddings():
    # A wider initialisation than the default gives the random teacher a peaked distribution.
    teacher = tiny(dtype=torch.float32, initializer_range=0.1)
    train, val = teacher_topk(teacher, blocks(64, 1), k=64), teacher_topk(teacher, blocks(8, 2), k=64)
    assert captured_mass(train) > 0.5
    student = tiny(dtype=torch.float32, initializer_range=0.1)
    arch = Arch.from_config(student.config)
    target = Structure.dense(arch).replace("mlp", {l: list(range(0, I, 2)) for l in range(L)})
    cut_to(student, Structure.dense(arch), target, arch, None, None, False, 0.0, False)
    magnitude_prune(student, [0.5] * L, None)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    out = heal(student, train, val, CFG, seed=0)
    after = dict(student.named_parameters())
    assert out["val_kl_best"] < 0.85 * out["val_kl_before"], out["curve"]
    assert [c["step"] for c in out["curve"]][:3] == [0, 4, 8] and out["tokens_seen"] == out["steps_run"] * 4 * 32
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])  # frozen, tied
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert any("mlp.down_proj" in n for n in changed)
    for n, w in before.items():
        assert after[n].shape == w.shape, n
        if w.dim() == 2 and "layers" in n:
            assert not bool(((w == 0) & (after[n] != 0)).any()), n  # pruned weights stay pruned
    assert not any(p.requires_grad for p in student.parameters())


def test_early_stopping_keeps_the_best_checkpoint():
    teacher = tiny(dtype=torch.float32, initializer_range=0.1)
    train, val = teacher_topk(teacher, blocks(16, 1), k=64), teacher_topk(teacher, blocks(4, 2), k=64)
    student = tiny(seed=3, dtype=torch.float32, initializer_range=0.1)
    cfg = SimpleNamespace(**{**vars(CFG), "lr": 0.5, "patience": 1, "eval_every": 1})  # diverges at once
    out = heal(student, train, val, cfg, seed=0)
    assert out["stopped_early"] and out["steps_run"] < out["steps_planned"]
    from pipeline.pruning.distill import mean_kl

    assert abs(mean_kl(student, val) - out["val_kl_best"]) < 1e-5  # the model holds the best state
