"""The budget allocator: lands on its target, sees compensation, and picks up new granularities."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pipeline.pruning.allocator import Emulator, RefitCache, allocate, cost_fn, gram_store, kl_loss
from pipeline.pruning.compensation import GramHook
from pipeline.pruning.distill import teacher_topk
from pipeline.pruning.granularity import Granularity, register, unregister
from pipeline.pruning.importance import measure_importance
from pipeline.pruning.structure import Arch, Structure
from tests.test_structured import BLOCKS, tiny

CTX = 16  # attention scores at a 256-token context would dominate this tiny model's FLOPs
OPTS = dict(granularities=["layers", "hidden", "kv_heads", "q_heads", "mlp"], layer_metric="block_influence",
            layer_candidates=2, mlp_step=0.25, hidden_step=0.25, multiple_of=2, tolerance=0.01,
            compensate=True, damping=0.01, gram_store="auto", refit_cache_gb=4.0, loss_weights={})


@pytest.fixture(scope="module")
def setup():
    m = tiny(dtype=torch.float32, initializer_range=0.1)
    imp = measure_importance(m, BLOCKS, desc="stats")
    cache = teacher_topk(m, BLOCKS[:4], k=64)
    return m, imp, Arch.from_config(m.config), cache


@pytest.mark.parametrize("budget", [0.8, 0.55])
def test_budget_rung_lands_within_tolerance(setup, budget):
    m, imp, arch, cache = setup
    cfg = SimpleNamespace(**OPTS)
    a = allocate(m, Structure.dense(arch), imp, arch, cfg, budget, "flops", kl_loss(cache), BLOCKS, CTX)
    cost = cost_fn(arch, "flops", CTX)(a.structure.counts())
    assert budget - cfg.tolerance <= cost <= budget, (cost, a.trace)
    assert a.trace[-1]["cost"] == pytest.approx(cost)
    losses = [t["loss"] for t in a.trace]
    assert losses[0] == pytest.approx(0.0, abs=1e-6)  # the parent against itself
    assert len({c["move"] for t in a.trace[1:] for c in t["tried"]}) >= 2  # granularities competed


def test_several_candidate_layers_are_tried(setup):
    m, imp, arch, cache = setup
    cfg = SimpleNamespace(**{**OPTS, "granularities": ["layers"], "layer_candidates": 3, "tolerance": 0.2})
    a = allocate(m, Structure.dense(arch), imp, arch, cfg, 0.9, "flops", kl_loss(cache), BLOCKS, CTX)
    assert a.trace[1]["candidates"] == 3 and a.trace[1]["detail"].startswith("drop layer")
    tried = a.trace[1]["tried"]
    assert len({t["detail"] for t in tried}) == 3 and min(t["loss"] for t in tried) == pytest.approx(a.trace[1]["loss"], abs=1e-6)


class Toy(Granularity):
    """A granularity the pipeline has never heard of: free to cut, and costly to keep."""

    name, order = "toy", 90

    def dense(self, arch):
        return list(range(4))

    def count(self, s):
        return len(s["toy"])

    def scores(self, imp):
        return torch.arange(4.0)

    def select(self, s, parent, count, imp, arch):
        return s.replace("toy", s["toy"][:count])

    def moves(self, s, parent, imp, arch, opts):
        return [("drop a toy unit", self.select(s, parent, len(s["toy"]) - 1, imp, arch))] if s["toy"] else []

    def remove(self, model, current, target, arch, stats=None):
        pass

    def flops(self, counts, arch, context):
        return counts["toy"] * 20_000


def test_a_newly_registered_granularity_is_picked_up_by_the_allocator(setup):
    m, imp, arch, cache = setup
    register(Toy())
    try:
        assert Structure.dense(arch).counts()["toy"] == 4
        cfg = SimpleNamespace(**{**OPTS, "granularities": ["mlp", "toy"], "tolerance": 0.2})
        a = allocate(m, Structure.dense(arch), imp, arch, cfg, 0.9, "flops", kl_loss(cache), BLOCKS, CTX)
        assert [t["move"] for t in a.trace[1:]] == ["toy"] * len(a.trace[1:])  # free moves win
        assert a.structure.counts()["toy"] < 4
    finally:
        unregister("toy")
    assert "toy" not in Structure.dense(arch).counts()


def test_unknown_granularity_is_refused_naming_the_key(setup):
    m, imp, arch, cache = setup
    cfg = SimpleNamespace(**{**OPTS, "granularities": ["mlp", "experts"]})
    with pytest.raises(ValueError, match=r"ladder.allocator.granularities: unknown \['experts'\]"):
        allocate(m, Structure.dense(arch), imp, arch, cfg, 0.9, "flops", kl_loss(cache), BLOCKS, CTX)


def test_a_loss_weight_below_one_favours_its_granularity(setup):
    """Weighting layer moves' loss increase near zero makes every coarse move a layer drop; at
    weight 1 the same budget is met with other granularities too."""
    m, imp, arch, cache = setup
    moves = {}
    for w in (1.0, 1e-9):
        cfg = SimpleNamespace(**{**OPTS, "loss_weights": {"layers": w}, "tolerance": 0.05})
        a = allocate(m, Structure.dense(arch), imp, arch, cfg, 0.75, "flops", kl_loss(cache), BLOCKS, CTX)
        moves[w] = [t["move"] for t in a.trace[1:]]
    assert moves[1e-9][0] == "layers" and set(moves[1.0]) != {"layers"}
    assert moves[1e-9].count("layers") > moves[1.0].count("layers")


def test_a_loss_weight_for_an_unknown_granularity_is_refused(setup):
    m, imp, arch, cache = setup
    cfg = SimpleNamespace(**{**OPTS, "loss_weights": {"layer": 0.5}})
    with pytest.raises(ValueError, match=r"ladder.allocator.loss_weights: unknown \['layer'\]"):
        allocate(m, Structure.dense(arch), imp, arch, cfg, 0.9, "flops", kl_loss(cache), BLOCKS, CTX)


# Memory at scale: an 8B model's candidate Grams (57 GB) and refits must not pile up on one GPU.


def test_a_bounded_refit_cache_changes_nothing_but_what_it_keeps(setup, monkeypatch):
    """With no room at all, only the accepted structure's and the round's best candidate's refits
    stay cached, and the allocation is exactly the one an unbounded cache gives."""
    m, imp, arch, cache = setup
    made, real = [], Emulator.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(Emulator, "__init__", spy)
    runs = {}
    for gb in (4.0, 0.0):
        cfg = SimpleNamespace(**{**OPTS, "refit_cache_gb": gb})
        runs[gb] = allocate(m, Structure.dense(arch), imp, arch, cfg, 0.55, "flops", kl_loss(cache), BLOCKS, CTX)
        runs[gb, "cache"] = made[-1].cache
    assert runs[0.0].trace == runs[4.0].trace and runs[0.0].structure.to_json() == runs[4.0].structure.to_json()
    bounded, unbounded = runs[0.0, "cache"], runs[4.0, "cache"]
    held = set().union(*bounded.held.values())
    assert held and set(bounded.entries) <= held  # nothing else survives a zero budget
    assert len(unbounded.entries) > len(bounded.entries)  # so the bound did evict


def test_refit_cache_evicts_least_recently_used_and_never_what_is_held():
    c = RefitCache(max_bytes=2 * 4 * 4)  # room for two 4-float tensors
    made = []

    def make(v):
        return lambda: made.append(v) or torch.full((4,), float(ord(v)))

    for k in "abc":
        c.get(k, make(k))
    assert list(c.entries) == ["b", "c"]  # "a" was least recently used
    c.get("b", make("b"))  # a hit: no rebuild, and "b" becomes most recent
    assert made == ["a", "b", "c"]
    c.hold("current", ["c"])
    c.get("d", make("d"))
    assert list(c.entries) == ["c", "d"]  # "b" went although "c" was older: "c" is held
    c.hold("best", ["d"])
    c.get("e", make("e"))
    assert set(c.entries) == {"c", "d"}  # the newest entry goes when everything else is held


def test_gram_matrices_go_to_host_memory_when_they_would_fill_the_gpu(monkeypatch):
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80e9, 80e9))
    assert gram_store(gpu, 57e9, "auto") == torch.device("cpu")  # an 8B model's 57 GB
    assert gram_store(gpu, 1e9, "auto") == gpu
    assert gram_store(gpu, 1e9, "host") == torch.device("cpu")
    assert gram_store(gpu, 57e9, "device") == gpu
    cpu = torch.device("cpu")
    assert gram_store(cpu, 57e9, "auto") == cpu


def test_a_gram_hook_accumulates_where_it_is_told():
    lin = torch.nn.Linear(3, 2)
    default, meta = GramHook(lin, stop=False), GramHook(lin, stop=False, store=torch.device("meta"))
    lin(torch.randn(5, 3))
    lin(torch.randn(4, 3))
    assert default.result().device.type == "cpu" and default.count == 9
    g = meta.result()
    assert g.device.type == "meta" and g.shape == (4, 4) and g.dtype == torch.float64


def test_candidates_are_scored_on_blocks_no_refit_reads():
    from pipeline.pruning.calibration_blocks import split_blocks

    calib = torch.arange(10)[:, None].repeat(1, 3)
    scoring, fitting = split_blocks(calib, SimpleNamespace(eval_blocks=3, eval_on="held_out"))
    assert scoring[:, 0].tolist() == [7, 8, 9] and fitting[:, 0].tolist() == list(range(7))
    scoring, fitting = split_blocks(calib, SimpleNamespace(eval_blocks=3, eval_on="first"))
    assert scoring[:, 0].tolist() == [0, 1, 2] and len(fitting) == 10
    with pytest.raises(ValueError, match="eval_blocks=10 leaves no calibration block"):
        split_blocks(calib, SimpleNamespace(eval_blocks=10, eval_on="held_out"))
