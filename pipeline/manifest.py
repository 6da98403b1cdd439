"""Stage `manifest`: the one file a deployment reads (`artifacts/manifest.yaml`).

Gathers the base's provenance, every rung (path, sha256 of every file it loads from, shape, params,
non-zeros, FLOPs, routing cost, per-task accuracy, perplexity; measured timings only when they are
the cost, `cost.kind=latency`), the router (weights, sha256, risk model, candidates, certified
threshold and its certificate, test metrics), the cascade (order, deferral, thresholds, epsilon,
delta, calibration size, test metrics), route-then-escalate (both thresholds, certificate, test metrics),
the runtime's request limits (`serve.*`) and build info (git revision, params hash, library
versions), validates it against `pipeline/deploy/manifest_schema.py` and writes it atomically.
With the default analytic cost, the same config and seed give a byte-identical manifest.

Also writes `artifacts/vllm_semantic_router.yaml`: the ladder as a vLLM Semantic Router config
(v0.3) that `vllm-sr config validate` accepts; see `vllm_semantic_router`.
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from pipeline.common.stage import begin

LIBRARIES = ("torch", "transformers", "llmcompressor", "datasets", "dvc", "hydra-core", "wandb", "numpy",
             "safetensors", "pydantic")


def _args(ap):
    ap.add_argument("--base", default="artifacts/base")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--router", default="artifacts/router")
    ap.add_argument("--cascade", default="artifacts/cascade")
    ap.add_argument("--escalate", default="artifacts/escalate")
    ap.add_argument("--speed", default="artifacts/speed/speed.json", help="read only when cost.kind=latency")
    ap.add_argument("--out", default="artifacts/manifest.yaml")
    ap.add_argument("--vllm-sr-out", default="artifacts/vllm_semantic_router.yaml")


def git_info() -> tuple[str, bool]:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip() != ""
        return rev, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)", False


def library_versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def rung_entry(name: str, ladder_dir: Path, eval_dir: Path, rel_to: Path, costs, k: int) -> dict:
    from pipeline.common.formats import read_json

    rep = read_json(ladder_dir / name / "pruning_report.json")
    m = read_json(eval_dir / name / "metrics.json")
    key = "acc_norm" if m["prediction"] == "acc_norm" else "acc"
    if not rep.get("files_sha256"):
        stage = "dense" if name == "dense" else f"prune@{name}"
        raise SystemExit(f"manifest: {ladder_dir / name / 'pruning_report.json'} records no files_sha256 (built "
                         f"before every file was hashed): rebuild it with `dvc repro {stage}`")
    measured = costs.kind == "latency"  # timings vary run to run: only in the manifest when they are the cost
    d = costs.detail[name]
    return {
        "name": name,
        "path": os.path.relpath(ladder_dir / name, rel_to),
        "parent": rep["parent"],
        "files_sha256": rep["files_sha256"],
        "shape": _shape(rep["counts"]),
        "params": m["cost"]["params"],
        "nonzero_params": m["cost"]["nonzero_params"],
        "flops_per_token": m["cost"]["flops_per_token"],
        "relative_flops": rep["relative"]["flops"],
        "latency_ms": {"query": d["query_ms"], "prefill": d["prefill_ms"], "decode_per_token": d["decode_ms_per_token"]}
        if measured else None,
        "throughput_tokens_per_s": None,
        "routing_cost": float(costs.raw[k]),
        "relative_cost": float(costs.relative[k]),
        "perplexity": m["perplexity"]["perplexity"],
        "accuracy": {t: v[key] for t, v in m["tasks"].items()},
    }


def _shape(counts: dict) -> dict:
    """The rung's shape from the prune report's counts (granularity name -> count)."""
    return {"layers": counts["layers"], "hidden": counts["hidden"], "kv_heads": counts["kv_heads"],
            "q_per_kv": counts["q_heads"], "mlp": counts["mlp"]}


def _certificate(certified: dict, calibration_size: int) -> dict:
    return {"epsilon": certified["epsilon"], "delta": certified["delta"], "calibration_size": calibration_size,
            "calibration_drop_upper_bound": certified["calibration_drop_upper_bound"]}


def build_manifest(cfg, args) -> dict:
    from pipeline.common.assets import sha256_file
    from pipeline.common.formats import read_json
    from pipeline.common.tracking import params_hash
    from pipeline.routing.costs import rung_costs

    out_dir = Path(args.out).parent
    ladder_dir, eval_dir = Path(args.ladder_dir), Path(args.eval_dir)
    costs = rung_costs(cfg.cost, cfg.rungs, ladder_dir, args.speed)
    rungs = [rung_entry(r, ladder_dir, eval_dir, out_dir, costs, k) for k, r in enumerate(cfg.rungs)]
    router_dir, cascade_dir, escalate_dir = Path(args.router), Path(args.cascade), Path(args.escalate)
    rmeta = read_json(router_dir / "router.json")
    rmetrics = read_json(router_dir / "metrics.json")
    cth = read_json(cascade_dir / "thresholds.json")
    cmetrics = read_json(cascade_dir / "metrics.json")
    eth = read_json(escalate_dir / "thresholds.json")
    emetrics = read_json(escalate_dir / "metrics.json")
    rev, dirty = git_info()
    base = read_json(Path(args.base) / "provenance.json")
    n_cal = rmetrics["split_sizes"]["calibration"]
    rtest = rmetrics["test"]
    from pipeline.deploy.manifest_schema import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "name": base["name"] + "-ladder",
        "prediction": cfg.evaluate.prediction,
        "base": base,
        "costs": {"kind": costs.kind, "unit": costs.unit, "prompt_tokens": cfg.cost.prompt_tokens,
                  "scored_tokens": cfg.cost.scored_tokens},
        "rungs": rungs,
        "router": {
            "path": os.path.relpath(router_dir, out_dir),
            "weights": "router.safetensors", "weights_sha256": sha256_file(router_dir / "router.safetensors"),
            "config": "router.json", "config_sha256": sha256_file(router_dir / "router.json"),
            "features": rmeta["features"]["kind"], "model": rmeta["model"]["name"], "risk": rmeta.get("risk", "harm"),
            "candidates": rmeta["candidates"], "threshold": rmeta["threshold"], "target": rmeta["target"],
            "certificate": _certificate(rmetrics["certified"], n_cal) if rmeta["target"] == "accuracy" else None,
            "metrics": {"test": rtest["router"], "always_dense": rtest["always_dense"],
                        "random_matched_cost": rtest["random_matched_cost"],
                        "single_rung_hull": rtest["single_rung_hull"], "oracle": rtest["oracle"]},
        },
        "cascade": {
            "path": os.path.relpath(cascade_dir / "thresholds.json", out_dir),
            "sha256": sha256_file(cascade_dir / "thresholds.json"),
            "order": cth["order"], "deferral": cth["deferral"]["kind"], "signal": cth["deferral"]["signal"],
            "method": cth["method"], "thresholds": cth["thresholds"],
            "epsilon": cth["epsilon"], "delta": cth["delta"], "calibration_size": cth["n_calibration"],
            "test_metrics": cmetrics["test"][cth["method"]],
        },
        "escalate": {
            "path": os.path.relpath(escalate_dir / "thresholds.json", out_dir),
            "sha256": sha256_file(escalate_dir / "thresholds.json"),
            "threshold": eth["threshold"], "deferral_threshold": eth.get("deferral_threshold", eth["threshold"]),
            "certificate": _certificate(emetrics["certified"], eth["n_calibration"]),
            "test_metrics": emetrics["test"],
        },
        "serve": cfg.serve.model_dump(),
        "build": {"git_revision": rev, "git_dirty": dirty, "params_hash": params_hash(cfg), "seed": cfg.seed,
                  "libraries": library_versions()},
    }


def router_per_task(router_dir: Path) -> dict[str, tuple[str, float, int]]:
    """Per task: the rung the router sends most of that task's calibration queries to, the share it
    sends there, and how many queries that is (Semantic Router can condition on a request's metadata,
    not on our embedding model, so this is how much of the router its config can carry)."""
    from collections import Counter

    import numpy as np

    from pipeline.routing.policies import route

    meta = json.loads((router_dir / "router.json").read_text())
    rows = [r for r in map(json.loads, (router_dir / "risk.jsonl").read_text().splitlines()) if r["split"] == "calibration"]
    t = -np.inf if meta["threshold"] is None else meta["threshold"]
    cand = list(range(1, len(meta["candidates"]) + 1))  # indices into ["dense", *candidates]
    names = ["dense", *meta["candidates"]]
    by_task: dict[str, Counter] = {}
    for r in rows:
        k = int(route(np.asarray([r["risk"]], dtype=np.float64).reshape(1, -1), cand, t)[0]) if cand else 0
        by_task.setdefault(r["task"], Counter())[names[k]] += 1
    out = {}
    for task in sorted(by_task):
        (rung, count), = by_task[task].most_common(1)
        total = sum(by_task[task].values())
        out[task] = (rung, count / total, total)
    return out


SR_METHOD = {"margin": "margin", "margin_norm": "margin"}  # the rest: avg_logprob, the nearest SR method
SR_PORT = 8000


def vllm_semantic_router(manifest: dict, per_task: dict[str, tuple[str, float, int]]) -> str:
    """The ladder as a vLLM Semantic Router config (v0.3), valid under `vllm-sr config validate`.

    - providers.models: one per rung, each with its own backend endpoint (rung k on port 8000 + k:
      point them at where each rung is served) and its price from the cost model (currency XXX,
      ISO 4217 for "no currency": the rung's cost per query relative to dense);
    - routing.modelCards: one per rung (parameters, cost, accuracy in the description);
    - routing.signals.metadata + one decision per task: the router, as far as SR can express it
      (SR routes on request metadata, not on our embedding model): requests tagged with that task
      start at the rung the router picks most often for it, and escalate to dense when unsure;
    - a catch-all decision (rules AND over no conditions: SR's match-all) with the cascade's
      rungs and `algorithm: confidence`; it fires for every request no task decision took.
    SR computes confidence from generated tokens' log-probabilities, not from our answer-choice
    scores, so every threshold here needs re-calibration on SR's scale (say so in the file)."""
    import yaml

    c = manifest["cascade"]
    order = [r for r, t in zip(c["order"], c["thresholds"] + [0.0]) if t is not None]  # skipped rungs left out
    model = lambda r: f"{manifest['name']}-{r}"  # noqa: E731
    unit = manifest["costs"]["kind"]
    method = SR_METHOD.get(c["signal"], "avg_logprob")
    providers = [{
        "name": model(r["name"]), "provider_model_id": model(r["name"]), "api_format": "openai",
        "backend_refs": [{"name": f"{r['name']}-local", "endpoint": f"127.0.0.1:{SR_PORT + k}", "protocol": "http",
                          "weight": 100}],
        "pricing": {"currency": "XXX", "prompt_per_1m": round(r["relative_cost"], 6),
                    "completion_per_1m": round(r["relative_cost"], 6)},
    } for k, r in enumerate(manifest["rungs"])]
    cards = [{"name": model(r["name"]), "param_size": f"{r['params'] / 1e6:.1f}M",
              "description": f"{r['name']}: {r['relative_cost']:.3f}x dense cost ({unit}), "
                             f"{r['relative_flops']:.2f}x dense FLOPs/token, mean accuracy {r['accuracy']['mean']:.3f}",
              "tags": ["ladder", "dense" if r["name"] == "dense" else "pruned"]} for r in manifest["rungs"]]
    confidence = {"confidence_method": method, "threshold": 0.5, "escalation_order": "declared", "on_error": "skip"}
    decisions, metadata = [], []
    for task, (rung, share, n) in per_task.items():
        name = f"task_{task}"
        metadata.append({"name": name, "key": "task", "predicate": {"equals": task},
                         "description": f"requests whose metadata says task={task}"})
        refs = [rung, "dense"] if rung != "dense" else ["dense"]
        decisions.append({
            "name": f"router_{task}", "priority": 200,
            "description": f"ladder router for {task}: starts at {rung} (the router's pick for {share:.0%} of "
                           f"{n} calibration queries of this task), escalates to dense when unsure",
            "rules": {"operator": "AND", "conditions": [{"type": "metadata", "name": name}]},
            "modelRefs": [{"model": model(r), "use_reasoning": False} for r in refs],
            "algorithm": {"type": "confidence", "confidence": dict(confidence)} if len(refs) > 1 else {"type": "static"},
        })
    decisions.append({
        "name": "ladder_cascade", "priority": 100,
        "description": f"cascade {' > '.join(order)} for every other request",
        "rules": {"operator": "AND", "conditions": []},  # AND over nothing: SR's match-all
        "modelRefs": [{"model": model(r), "use_reasoning": False} for r in order],
        "algorithm": {"type": "confidence", "confidence": dict(confidence)} if len(order) > 1 else {"type": "static"},
    })
    routing = {"modelCards": cards, "decisions": decisions}
    if metadata:
        routing = {"modelCards": cards, "signals": {"metadata": metadata}, "decisions": decisions}
    config = {"version": "v0.3",
              "providers": {"defaults": {"model": model("dense")}, "models": providers},
              "routing": routing}
    header = (
        f"# vLLM Semantic Router config (v0.3) for {manifest['name']}, generated by `pipeline.manifest`;\n"
        "# `vllm-sr config validate --config <this file>` accepts it (a test runs it).\n"
        f"# Cascade {' > '.join(order)}: deferral {c['deferral']} on {c['signal']}, epsilon {c['epsilon']}, "
        f"delta {c['delta']}; ladder thresholds {c['thresholds']}.\n"
        "# RE-CALIBRATE: SR computes confidence from generated tokens' log-probabilities "
        f"({method}), not from this ladder's\n"
        "# answer-choice scores, so threshold 0.5 is a placeholder on SR's scale, not the certified ladder threshold.\n"
        "# Backends: rung k listens on 127.0.0.1:" + str(SR_PORT) + "+k; point backend_refs at where each rung is served.\n"
        "# Pricing: currency XXX (ISO 4217: no currency) = cost per query relative to dense "
        f"({unit}); multiply by dense's real price.\n"
        "# Router: per-task decisions (request metadata `task`) start at the rung the ladder's router picks most\n"
        "# often for that task; SR cannot run the ladder's own risk model, so this is its per-task summary.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def main(argv: list[str] | None = None) -> None:
    st = begin("manifest", _args, argv)
    cfg, args = st.cfg, st.args
    import yaml

    from pipeline.common.atomic import atomic_write_text
    from pipeline.deploy.manifest_schema import validate_manifest

    with st.tracked() as tracker:
        raw = build_manifest(cfg, args)
        validate_manifest(raw, "the manifest being built")  # never write one the runtime would refuse
        text = ("# Ladder deployment manifest: load with `python -m pipeline.serve --manifest <this file>`\n"
                + yaml.safe_dump(raw, sort_keys=False))
        atomic_write_text(args.out, text)
        atomic_write_text(args.vllm_sr_out, vllm_semantic_router(raw, router_per_task(Path(args.router))))
        tracker.summary({"manifest/rungs": len(raw["rungs"]), "manifest/params_hash": raw["build"]["params_hash"]})
    st.done(read=f"{len(cfg.rungs)} rungs, router, cascade", wrote=f"{args.out}, {args.vllm_sr_out}")


if __name__ == "__main__":
    main()
