"""Benchmark: per-layer figures measured on the default model, projected to Llama-3.1-8B on one 80 GB GPU.

    nice -n 10 .venv/bin/python benchmarks/scale_plan.py [--base artifacts/base] [--build artifacts]

Measures on this machine's CPU, on SmolLM2-135M (the built `artifacts/base`, or the packaged
model loaded as the `base` stage loads it), in float32:

- forward time per token per decoder layer (a [4, 256] batch, logits for the last position only,
  so the time is the 30 layers'), and the FLOP/s that implies;
- calibration statistics per layer: the hooked importance pass against the same pass without hooks;
- the least-squares compensation of one layer at the default size: the fp64 Gram of down_proj's
  1536 inputs per token, and the refit solve keeping half of them (timed at 768, 1536 and 3072
  inputs too, to check the O(d^3) exponent that is then extrapolated to 14336);
- checkpoint bytes per layer and of the embeddings, sha256 and load throughput of the checkpoint.

Then prints, for every stage of the default graph, the projected memory and time for
Llama-3.1-8B in bf16 on one H100-80GB, with every assumption printed next to the figure. These
are projections from CPU measurements and stated GPU peak figures, NOT GPU measurements.
Writes `artifacts/benchmarks/scale_plan.json`. Takes about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from pathlib import Path

# --- the two shapes -------------------------------------------------------------------------
SMOL = dict(name="SmolLM2-135M", layers=30, hidden=576, heads=9, kv=3, head_dim=64, mlp=1536, vocab=49152, tied=True)
L8B = dict(name="Llama-3.1-8B", layers=32, hidden=4096, heads=32, kv=8, head_dim=128, mlp=14336, vocab=128256,
           tied=False)

# --- assumptions (printed with the projection) ----------------------------------------------
GPU = {
    "name": "H100 SXM 80GB",
    "bf16_dense_peak_tflops": 989.0,   # NVIDIA datasheet, dense (no 2:4 sparsity)
    "fp64_tensor_peak_tflops": 67.0,   # NVIDIA datasheet (FP64 Tensor Core)
    "hbm_tb_per_s": 3.35,
    "memory_gb": 80.0,
    "mfu_forward": 0.40,               # assumed utilisation of batched bf16 forward passes (B x 256 tokens)
    "mfu_fp64": 0.50,                  # assumed utilisation of fp64 Gram / solve (large GEMMs, LU)
    "bandwidth_utilisation": 0.70,     # assumed share of HBM bandwidth reached by batch-1 decode
    "host_to_device_gb_per_s": 20.0,   # assumed PCIe Gen5 x16 copy rate from pageable host memory
}
BYTES = {"bf16": 2, "fp32": 4, "fp64": 8}
DISK_GB_PER_S = 1.0  # assumed NVMe write/read for checkpoints (this machine's figure is printed too)

# --- the default config's work per stage (conf/, README's build of 2026-11-24) ---------------
WORK = {
    "calibration_tokens": 128 * 256,          # data.calibration
    "teacher_tokens": 8 * 256,                # ladder.allocator.eval_blocks (healing off: no heal set)
    "allocator_eval_tokens": 8 * 256,         # per candidate
    "allocator_gram_tokens": 16 * 256,        # ladder.allocator.gram_blocks
    "allocator_refit_cache_gb": 4.0,          # ladder.allocator.refit_cache_gb
    "compensation_tokens": 32 * 256,          # ladder.compensation.blocks
    "heal_tokens": 65536,                     # ladder.heal.tokens (off by default)
    "eval_tokens_per_rung": 175_000 + 16_000,  # README: scored + perplexity tokens per rung
    "rungs": {"dense": 1.0, "f90": 0.90, "f75": 0.75, "f60": 0.60, "f40": 0.40},
    "parents": {"f90": "dense", "f75": "f90", "f60": "f75", "f40": "f60"},
    # README table (this machine, 135M fp32): stages whose work does not grow with the model
    "model_free_seconds": {"data": 32.0, "router (MiniLM features)": 81.6, "cascade, escalate, compare": 12.1,
                           "report, manifest, summary": 8.6},
}


def layer_params(s: dict) -> int:
    attn = s["hidden"] * s["head_dim"] * (2 * s["heads"] + 2 * s["kv"])
    return attn + 3 * s["hidden"] * s["mlp"] + 2 * s["hidden"]


def embed_params(s: dict) -> int:
    return s["vocab"] * s["hidden"] * (1 if s["tied"] else 2) + s["hidden"]


def total_params(s: dict) -> int:
    return s["layers"] * layer_params(s) + embed_params(s)


def layer_flops_per_token(s: dict, context: int) -> float:
    """Projections (2 FLOPs per multiply-add) plus QK^T and AV at `context` keys (pipeline/models/cost.py)."""
    proj = 2 * (s["hidden"] * s["head_dim"] * (2 * s["heads"] + 2 * s["kv"]) + 3 * s["hidden"] * s["mlp"])
    return proj + 4 * s["heads"] * s["head_dim"] * context


def head_flops_per_token(s: dict) -> float:
    return 2 * s["vocab"] * s["hidden"]


def refit_flops(n: int, out_dim: int) -> float:
    """Least-squares refit keeping k = n/2 of n inputs: LU of the k x k system (2/3 k^3), the right-hand
    side W G[:, K] (2 out n k) and the solve against it (2 k^2 out)."""
    k = n // 2
    return 2 / 3 * k ** 3 + 2 * out_dim * (n + 1) * k + 2 * k ** 2 * out_dim


def _median(f, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def load_default(base: Path):
    """The built base checkpoint, or the packaged default loaded as the base stage does."""
    import torch
    from transformers import AutoModelForCausalLM

    if (base / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True).eval(), base
    from pipeline.common.config import compose, validate
    from pipeline.models.source import load_base

    cfg = validate(compose(["tracking=disabled"]))
    model, _, _ = load_base(cfg.model, cfg.seed)
    return model, None


def measure(base: Path) -> dict:
    import torch

    from pipeline.models.architecture import decoder_layers
    from pipeline.pruning.compensation import GramHook, _Stop, refit
    from pipeline.pruning.importance import measure_importance, plain_forward

    import transformers  # noqa: F401  (imported before the load is timed)

    out: dict = {"torch_threads": torch.get_num_threads(), "dtype": "float32", "device": "cpu",
                 "load_average_1min": os.getloadavg()[0]}
    t = time.perf_counter()
    model, ckpt = load_default(base)
    out["load_seconds"] = round(time.perf_counter() - t, 2)
    assert len(decoder_layers(model)) == SMOL["layers"] and model.config.hidden_size == SMOL["hidden"]
    g = torch.Generator().manual_seed(0)
    B, T = 4, 256
    ids = torch.randint(0, SMOL["vocab"], (B, T), generator=g)

    with torch.no_grad():
        model(input_ids=ids[:1, :64], use_cache=False, logits_to_keep=1)  # warm-up
        fwd = _median(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), 3)
    per_layer_token = fwd / (SMOL["layers"] * B * T)
    flops = layer_flops_per_token(SMOL, context=T // 2)  # causal: mean context T/2
    out["forward"] = {"batch": [B, T], "seconds": round(fwd, 3), "seconds_per_token_per_layer": per_layer_token,
                      "flops_per_token_per_layer": flops, "achieved_gflops": flops / per_layer_token / 1e9}

    blocks = torch.randint(0, SMOL["vocab"], (8, T), generator=g)
    # interleaved, median of three, so load from other processes hits both passes alike
    pair = blocks[:2]
    plains, hookeds = [], []
    for _ in range(3):
        t = time.perf_counter()
        plain_forward(model, pair, batch_size=2, desc="plain")
        plains.append(time.perf_counter() - t)
        t = time.perf_counter()
        measure_importance(model, pair, batch_size=2, desc="hooked")
        hookeds.append(time.perf_counter() - t)
    plain, hooked = statistics.median(plains), statistics.median(hookeds)
    tokens = pair.numel()
    out["calibration"] = {"tokens": tokens, "plain_seconds": plains, "hooked_seconds": hookeds,
                          "overhead_x": hooked / plain,
                          "hook_seconds_per_token_per_layer": (hooked - plain) / (tokens * SMOL["layers"])}

    # One layer's compensation at the default size: the fp64 Gram of down_proj's input, then the refit.
    layer = decoder_layers(model)[0]
    down = layer.mlp.down_proj
    hook = GramHook(down, stop=True)
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(blocks), 4):
            try:
                model(input_ids=blocks[s:s + 4], use_cache=False)
            except _Stop:
                pass
    gram_pass = time.perf_counter() - t
    gram = hook.result()
    # the Gram's own cost, without the forward up to the hook: the same product on the same shape
    x = torch.randn(4 * T, SMOL["mlp"] + 1, dtype=torch.float64, generator=g)
    gram_only = _median(lambda: x.T @ x, 3) * (tokens / (4 * T))
    keep = torch.arange(0, SMOL["mlp"], 2)
    solve = _median(lambda: refit(down.weight.data, None, gram, keep, 0.01, False), 3)
    # the refit's growth with size, at the 8B down_proj's aspect (out = hidden = 4096/14336 of the inputs)
    sizes = {}
    for n in (768, 1536, 3072):
        xs = torch.randn(2 * n, n + 1, dtype=torch.float64, generator=g)
        G = xs.T @ xs / len(xs)
        W = torch.randn(round(n * L8B["hidden"] / L8B["mlp"]), n, generator=g)
        sizes[n] = _median(lambda: refit(W, None, G, torch.arange(0, n, 2), 0.01, False), 3)
    exponent = math.log(sizes[3072] / sizes[768]) / math.log(4)
    out["compensation"] = {"consumer": "down_proj", "inputs": SMOL["mlp"], "tokens": tokens,
                           "gram_seconds_per_token": gram_only / tokens, "gram_pass_seconds": round(gram_pass, 3),
                           "refit_seconds": solve, "refit_flops": refit_flops(SMOL["mlp"], SMOL["hidden"]),
                           "refit_seconds_by_inputs_at_8b_aspect": sizes,
                           "refit_exponent_768_to_3072": exponent}

    if ckpt is not None:
        from pipeline.common.formats import check_safetensors

        header = {}
        files = sorted(ckpt.glob("*.safetensors"))
        for f in files:
            header.update(check_safetensors(f))
        nbytes = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
        per_layer = sum(b for k, b in nbytes.items() if k.startswith("model.layers.0."))
        size = sum(f.stat().st_size for f in files)
        t = time.perf_counter()
        for f in files:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
        sha = time.perf_counter() - t
        out["checkpoint"] = {"bytes": size, "bytes_per_layer": per_layer,
                             "bytes_embeddings": sum(b for k, b in nbytes.items() if "embed" in k or "lm_head" in k),
                             "sha256_mb_per_s": size / sha / 1e6, "load_gb_per_s": size / out["load_seconds"] / 1e9}
    return out


def gpu_seconds(flops: float, fp64: bool = False) -> float:
    if fp64:
        return flops / (GPU["fp64_tensor_peak_tflops"] * 1e12 * GPU["mfu_fp64"])
    return flops / (GPU["bf16_dense_peak_tflops"] * 1e12 * GPU["mfu_forward"])


def project(m: dict, build: Path | None) -> dict:
    s, t = SMOL, L8B
    ctx = 128  # mean causal context of 256-token blocks
    lf = layer_flops_per_token(t, ctx)
    fwd_flops_tok = t["layers"] * lf + head_flops_per_token(t)
    weights_gb = total_params(t) * BYTES["bf16"] / 1e9
    layer_gb = layer_params(t) * BYTES["bf16"] / 1e9
    ratio = {"params_per_layer": layer_params(t) / layer_params(s),
             "flops_per_layer_token": lf / layer_flops_per_token(s, ctx),
             "gram_down_proj_d2": (t["mlp"] / s["mlp"]) ** 2,
             "refit_down_proj_d3": (t["mlp"] / s["mlp"]) ** 3,
             "refit_down_proj_flops": refit_flops(t["mlp"], t["hidden"]) / refit_flops(s["mlp"], s["hidden"])}
    gb = 1e9

    def forward(tokens: float, rel: float = 1.0) -> float:
        return gpu_seconds(tokens * fwd_flops_tok * rel)

    def logits_gb(tokens: int) -> float:
        return tokens * t["vocab"] * BYTES["fp32"] / gb

    # compensation per layer: fp64 Grams of o_proj (4096+1) and down_proj (14336+1) inputs, and the
    # refits keeping half: LU of k x k (2/3 k^3), rhs = W G[:, K] (2 out n k), solve (2 k^2 out).
    def comp_layer(tokens: int) -> float:
        f = 0.0
        for n, out_dim in ((t["heads"] * t["head_dim"], t["hidden"]), (t["mlp"], t["hidden"])):
            f += 2 * (n + 1) ** 2 * tokens + refit_flops(n, out_dim)
        return gpu_seconds(f, fp64=True)

    grams_all_layers_gb = t["layers"] * ((t["heads"] * t["head_dim"] + 1) ** 2 + (t["mlp"] + 1) ** 2) * 8 / gb
    candidates = 35  # measured on the 135M ladder below when a build is given
    measured_candidates = {}
    if build is not None and (build / "ladder").is_dir():
        import yaml

        from pipeline.common.timings import read_timings

        for r in WORK["parents"]:
            secs = read_timings(build / "timings" / "prune" / f"{r}.json")
            alloc, spc = secs.get("allocate"), secs.get("allocate_per_candidate")
            rep, rec = build / "ladder" / r / "pruning_report.json", build / "ladder" / r / "recipe.yaml"
            if not secs and rep.exists() and rec.exists():  # a build from before timings/ existed
                alloc = json.loads(rep.read_text()).get("seconds", {}).get("allocate")
                spc = next((st["allocator"].get("seconds_per_candidate") for st in yaml.safe_load(rec.read_text())["steps"]
                            if "allocator" in st), None)
            if alloc and spc:
                measured_candidates[r] = round(alloc / spc)
        if measured_candidates:
            candidates = max(measured_candidates.values())
    stages = []

    def add(stage, mem_gb, seconds, how):
        stages.append({"stage": stage, "memory_gb": round(mem_gb, 1), "seconds": round(seconds, 1), "how": how})

    io = weights_gb / DISK_GB_PER_S
    sha = weights_gb * gb / (m.get("checkpoint", {}).get("sha256_mb_per_s", 500) * 1e6)
    add("base", weights_gb, 2 * io + sha,
        f"one bf16 copy ({weights_gb:.1f} GB); write + reload at {DISK_GB_PER_S} GB/s, sha256 at this CPU's rate")
    add("data", 1, WORK["model_free_seconds"]["data"], "tokenisation only: the 135M build's figure")
    cal_tok = WORK["calibration_tokens"]
    add("calibrate", weights_gb + logits_gb(8 * 256) + 8 * 256 * t["mlp"] * 2 * 3 / gb,
        forward(cal_tok) * max(1.0, m["calibration"]["overhead_x"]) + io,
        f"{cal_tok} tokens hooked forward, x{m['calibration']['overhead_x']:.2f} hook overhead measured here "
        "(an upper bound: hooks grow with width, matmuls with width^2); fp32 logits of a batch of 8 x 256")
    add("teacher", weights_gb + logits_gb(8 * 256), forward(WORK["teacher_tokens"]) + io,
        "allocator blocks' top-k distribution (healing off)")
    add("prune@dense", weights_gb, io + sha, "copy of the base written as rung 0")
    # The allocator's cache of refitted consumer weights: a full-size o_proj / down_proj per layer,
    # consumer and kept set. Width moves (KV, q, MLP) change the kept set of every layer. The cache
    # always keeps the accepted structure's and the round's best candidate's entries, plus up to
    # `ladder.allocator.refit_cache_gb` of others (pipeline/pruning/allocator.py, RefitCache).
    refit_entry_gb = (t["hidden"] * t["heads"] * t["head_dim"] * 2 + t["hidden"] * t["mlp"]) * BYTES["bf16"] / gb
    refit_cache_per_round_gb = t["layers"] * refit_entry_gb
    refit_cache_gb = 2 * refit_cache_per_round_gb + WORK["allocator_refit_cache_gb"]
    # One refit's working set on the GPU: its Gram (copied from the host), fp64 weight and solve.
    down_gram_gb = (t["mlp"] + 1) ** 2 * 8 / gb
    refit_work_gb = down_gram_gb + t["hidden"] * t["mlp"] * 8 * 3 / gb + (t["mlp"] // 2) ** 2 * 8 / gb
    gram_copy_s = grams_all_layers_gb / GPU["host_to_device_gb_per_s"]  # every layer's Grams, once per width candidate
    for r, parent in WORK["parents"].items():
        prel = WORK["rungs"][parent]
        cand = candidates * (forward(WORK["allocator_eval_tokens"], prel) + t["layers"] * comp_layer(0) / 2 + gram_copy_s)
        grams = forward(WORK["allocator_gram_tokens"], prel) + t["layers"] * comp_layer(WORK["allocator_gram_tokens"])
        cut = 2 * forward(WORK["compensation_tokens"], prel) + t["layers"] * comp_layer(WORK["compensation_tokens"])
        mem = weights_gb * prel + refit_cache_gb + refit_work_gb + logits_gb(8 * 256) + 4 * layer_gb
        add(f"prune@{r}", mem, io + grams + cand + cut + sha,
            f"{candidates} allocator candidates x {WORK['allocator_eval_tokens']} tokens on the parent "
            f"({prel:.2f}x FLOPs); fp64 Grams of all layers ({grams_all_layers_gb:.0f} GB) in host memory "
            f"(gram_store=auto), copied in per refit ({gram_copy_s:.1f} s per width candidate); refit cache "
            f"<= {refit_cache_gb:.1f} GB; LU of 7168^2 per down_proj")
    add("prune@f90, compensate=false", weights_gb + 2 * (t["mlp"] + 1) ** 2 * 8 / gb + 4 * layer_gb,
        io + t["layers"] * comp_layer(WORK["compensation_tokens"]) + 2 * forward(WORK["compensation_tokens"])
        + candidates * forward(WORK["allocator_eval_tokens"]) + sha,
        "ladder.allocator.compensate=false: candidates scored without refits (no all-layer Grams, no refit "
        "cache); the cut itself still refits layer by layer, one layer's fp64 Grams at a time")
    heal_mem = weights_gb * 0.6 + layer_params(t) * t["layers"] * 0.6 * (2 + 2 + 2) / gb
    add("heal (if enabled, f60)", heal_mem, gpu_seconds(3 * WORK["heal_tokens"] * fwd_flops_tok * 0.6),
        "fwd+bwd = 3x forward FLOPs; bf16 weights + bf16 grads + 8-bit AdamW (2 B/param) of decoder params; "
        "plus the best-state copy heal.py keeps (another 0.6 x weights) and activations (checkpointing needed)")
    for r, rel in WORK["rungs"].items():
        add(f"evaluate@{r}", weights_gb * rel + 4096 * t["vocab"] * 4 / gb,
            forward(WORK["eval_tokens_per_rung"], rel) + io * rel,
            f"{WORK['eval_tokens_per_rung']} tokens at {rel:.2f}x dense FLOPs; 4096-token scoring batch's fp32 logits")
    decode_ms = weights_gb * gb / (GPU["hbm_tb_per_s"] * 1e12 * GPU["bandwidth_utilisation"]) * 1e3
    add("speed (all rungs)", weights_gb + 2, sum(rel * (5 * 16 * decode_ms / 1e3 + 10 * forward(8 * 256))
                                                  for rel in WORK["rungs"].values()) + io * 3.65,
        f"batch-1 decode is bandwidth-bound: {decode_ms:.1f} ms/token for dense at "
        f"{GPU['bandwidth_utilisation']:.0%} of {GPU['hbm_tb_per_s']} TB/s")
    add("router (MiniLM)", 2, WORK["model_free_seconds"]["router (MiniLM features)"], "independent of the base")
    add("cascade, escalate, compare", 1, WORK["model_free_seconds"]["cascade, escalate, compare"], "no model")
    add("report, manifest, summary", 1, WORK["model_free_seconds"]["report, manifest, summary"],
        "digests come from the prune reports; the runtime re-hashes rungs at start")
    total = sum(x["seconds"] for x in stages if not x["stage"].startswith("heal") and "compensate=false" not in x["stage"])
    return {"ratios": ratio, "weights_gb": weights_gb, "layer_gb": layer_gb, "params": total_params(t),
            "flops_per_token": fwd_flops_tok, "allocator_candidates": candidates,
            "allocator_candidates_measured": measured_candidates, "stages": stages,
            "allocator_grams_gb": grams_all_layers_gb, "allocator_refit_cache_gb_per_round": refit_cache_per_round_gb,
            "allocator_refit_cache_gb": refit_cache_gb, "allocator_host_memory_gb": grams_all_layers_gb + 2 * weights_gb,
            "total_seconds_without_heal": total, "refit_down_proj_cpu_fp64_seconds_extrapolated":
                m["compensation"]["refit_seconds"] * ratio["refit_down_proj_flops"],
            "refit_down_proj_gpu_fp64_seconds": gpu_seconds(refit_flops(t["mlp"], t["hidden"]), fp64=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=Path("artifacts/base"))
    ap.add_argument("--build", type=Path, default=Path("artifacts"), help="a built default graph, for candidates")
    ap.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/scale_plan.json"))
    args = ap.parse_args()
    m = measure(args.base)
    p = project(m, args.build if args.build.is_dir() else None)
    f, c = m["forward"], m["compensation"]
    print("\nMEASURED on this CPU (SmolLM2-135M, float32):")
    print(f"  forward: {f['seconds_per_token_per_layer'] * 1e6:.1f} us per token per layer "
          f"({f['flops_per_token_per_layer'] / 1e6:.1f} MFLOP -> {f['achieved_gflops']:.1f} GFLOP/s, "
          f"{m['torch_threads']} threads)")
    cal = m["calibration"]
    print(f"  calibration: hooked pass {cal['overhead_x']:.2f}x the plain pass "
          f"({cal['hook_seconds_per_token_per_layer'] * 1e6:.1f} us per token per layer of statistics)")
    print(f"  compensation (one layer, down_proj, {c['inputs']} inputs): fp64 Gram "
          f"{c['gram_seconds_per_token'] * 1e6:.1f} us/token; refit keeping half {c['refit_seconds']:.3f} s; "
          f"({c['refit_flops'] / c['refit_seconds'] / 1e9:.1f} GFLOP/s fp64); at the 8B aspect, 768/1536/3072 "
          "inputs: " + ", ".join(f"{v:.3f} s" for v in c["refit_seconds_by_inputs_at_8b_aspect"].values())
          + f" (time ~ n^{c['refit_exponent_768_to_3072']:.2f})")
    print(f"  load average (1 min) at the start: {m['load_average_1min']:.1f} on {os.cpu_count()} cores")
    if "checkpoint" in m:
        k = m["checkpoint"]
        print(f"  checkpoint: {k['bytes'] / 1e6:.0f} MB, {k['bytes_per_layer'] / 1e6:.1f} MB per layer, "
              f"{k['bytes_embeddings'] / 1e6:.1f} MB embeddings; sha256 {k['sha256_mb_per_s']:.0f} MB/s, "
              f"load {k['load_gb_per_s']:.2f} GB/s")
    r = p["ratios"]
    print("\nPROJECTION (not a GPU measurement) for Llama-3.1-8B, bf16, one", GPU["name"])
    print(f"  assumptions: bf16 {BYTES['bf16']} B/param; {GPU['bf16_dense_peak_tflops']:.0f} TFLOP/s bf16 dense "
          f"peak x {GPU['mfu_forward']:.0%} assumed utilisation; fp64 {GPU['fp64_tensor_peak_tflops']:.0f} TFLOP/s x "
          f"{GPU['mfu_fp64']:.0%}; HBM {GPU['hbm_tb_per_s']} TB/s x {GPU['bandwidth_utilisation']:.0%}; "
          f"disk {DISK_GB_PER_S} GB/s; the default config's token counts")
    print(f"  ratios 8B/135M: params per layer {r['params_per_layer']:.1f}x, FLOPs per token per layer "
          f"{r['flops_per_layer_token']:.1f}x, down_proj Gram (d^2) {r['gram_down_proj_d2']:.0f}x, "
          f"refit (d^3) {r['refit_down_proj_d3']:.0f}x, refit FLOPs (4096 out, 14336 in) {r['refit_down_proj_flops']:.0f}x")
    print(f"  {p['params'] / 1e9:.2f} B params = {p['weights_gb']:.1f} GB bf16 ({p['layer_gb'] * 1e3:.0f} MB per "
          f"layer); {p['flops_per_token'] / 1e9:.1f} GFLOP per token; allocator candidates per rung "
          f"{p['allocator_candidates']} (measured on the 135M ladder: {p['allocator_candidates_measured'] or 'n/a'})")
    print(f"  one down_proj refit (keep 7168 of 14336): ~{p['refit_down_proj_cpu_fp64_seconds_extrapolated']:.0f} s on this "
          f"CPU by FLOP ratio, ~{p['refit_down_proj_gpu_fp64_seconds']:.2f} s on the GPU's fp64 units")
    print(f"  allocator (compensate=true): fp64 Grams of every layer's o_proj and down_proj inputs "
          f"{p['allocator_grams_gb']:.1f} GB (host memory, gram_store=auto); refit cache ~{p['allocator_refit_cache_gb_per_round']:.1f} GB "
          f"per structure, at most {p['allocator_refit_cache_gb']:.1f} GB (accepted + best candidate + refit_cache_gb); "
          f"prune's host memory ~{p['allocator_host_memory_gb']:.0f} GB (the Grams and loading the parent)")
    print(f"\n  {'stage':<28} {'GPU memory GB':>13} {'time s':>9}  how")
    for x in p["stages"]:
        print(f"  {x['stage']:<28} {x['memory_gb']:>13.1f} {x['seconds']:>9.1f}  {x['how']}")
    print(f"  {'total (healing off)':<28} {'':>13} {p['total_seconds_without_heal']:>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"measured": m, "assumptions": {"gpu": GPU, "bytes": BYTES, "work": WORK,
                                                                   "disk_gb_per_s": DISK_GB_PER_S},
                                    "projection": p}, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
