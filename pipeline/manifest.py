"""Stage `manifest`: the one file a deployment reads (`artifacts/manifest.yaml`).

Gathers the base's provenance, every rung (path, weights sha256, shape, params, non-zeros,
FLOPs, measured latency and throughput, per-task accuracy, perplexity), the router (weights,
sha256, features, threshold, test metrics), the cascade (order, signal, thresholds, epsilon,
delta, calibration size, test metrics) and build info (git revision, params hash, library
versions), validates it against `pipeline/manifest_schema.py` and writes it atomically.

Also writes `artifacts/vllm_semantic_router.yaml`: the ladder as vLLM Semantic Router model
cards and a decision with `algorithm: confidence` (config layout v0.3), for teams that serve
with it. Semantic Router scores the confidence of generated tokens, not of answer choices, so
the thresholds there are a starting point to re-calibrate; the order and models carry over.
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


def rung_entry(name: str, ladder_dir: Path, eval_dir: Path, rel_to: Path, dense_cost: float) -> dict:
    rep = json.loads((ladder_dir / name / "pruning_report.json").read_text())
    m = json.loads((eval_dir / name / "metrics.json").read_text())
    key = "acc_norm" if m["prediction"] == "acc_norm" else "acc"
    return {
        "name": name,
        "path": os.path.relpath(ladder_dir / name, rel_to),
        "parent": rep["parent"],
        "weights_sha256": rep["weights_sha256"],
        "shape": {k: rep["counts"][k] for k in ("layers", "kv_heads", "q_per_kv", "mlp")},
        "params": m["cost"]["params"],
        "nonzero_params": m["cost"]["nonzero_params"],
        "flops_per_token": m["cost"]["flops_per_token"],
        "relative_flops": rep["relative"]["flops"],
        "latency_ms": m["cost"]["latency_ms"],
        "throughput_tokens_per_s": m["cost"]["throughput_tokens_per_s"],
        "routing_cost": m["routing_cost"]["value"],
        "relative_cost": m["routing_cost"]["value"] / dense_cost,
        "perplexity": m["perplexity"]["perplexity"],
        "accuracy": {t: v[key] for t, v in m["tasks"].items()},
    }


def build_manifest(cfg, args) -> dict:
    from pipeline.common.assets import sha256_file
    from pipeline.common.tracking import params_hash

    out_dir = Path(args.out).parent
    ladder_dir, eval_dir = Path(args.ladder_dir), Path(args.eval_dir)
    dense = json.loads((eval_dir / "dense" / "metrics.json").read_text())["routing_cost"]
    rungs = [rung_entry(r, ladder_dir, eval_dir, out_dir, dense["value"]) for r in cfg.rungs]
    router_dir, cascade_dir = Path(args.router), Path(args.cascade)
    rmeta = json.loads((router_dir / "router.json").read_text())
    rmetrics = json.loads((router_dir / "metrics.json").read_text())
    cth = json.loads((cascade_dir / "thresholds.json").read_text())
    cmetrics = json.loads((cascade_dir / "metrics.json").read_text())
    rev, dirty = git_info()
    base = json.loads((Path(args.base) / "provenance.json").read_text())
    return {
        "schema_version": 1,
        "name": base["name"] + "-ladder",
        "prediction": cfg.evaluate.prediction,
        "base": base,
        "costs": {"kind": dense["kind"], "unit": dense["unit"]},
        "rungs": rungs,
        "router": {
            "path": os.path.relpath(router_dir, out_dir),
            "weights": "router.safetensors", "weights_sha256": sha256_file(router_dir / "router.safetensors"),
            "config": "router.json", "config_sha256": sha256_file(router_dir / "router.json"),
            "features": rmeta["features"]["kind"], "threshold": rmeta["threshold"], "target": rmetrics["target"],
            "metrics": {"test": rmetrics["test"]["router"], "always_dense": rmetrics["test"]["always_dense"],
                        "random_matched_cost": rmetrics["test"]["random_matched_cost"],
                        "oracle": rmetrics["test"]["oracle"], "overhead_ms_per_query": rmetrics["overhead_ms_per_query"]},
        },
        "cascade": {
            "path": os.path.relpath(cascade_dir / "thresholds.json", out_dir),
            "sha256": sha256_file(cascade_dir / "thresholds.json"),
            "order": cth["order"], "signal": cth["signal"], "method": cth["method"], "thresholds": cth["thresholds"],
            "epsilon": cth["epsilon"], "delta": cth["delta"], "calibration_size": cth["n_calibration"],
            "test_metrics": cmetrics["test"][cth["method"]],
        },
        "build": {"git_revision": rev, "git_dirty": dirty, "params_hash": params_hash(cfg), "seed": cfg.seed,
                  "libraries": library_versions()},
    }


SR_METHOD = {"margin": "margin", "margin_norm": "margin"}  # the rest: avg_logprob, the nearest SR method


def vllm_semantic_router(manifest: dict) -> str:
    """Model cards + one confidence-cascade decision, in vLLM Semantic Router's v0.3 layout."""
    import yaml

    c = manifest["cascade"]
    order = [r for r, t in zip(c["order"], c["thresholds"] + [0.0]) if t is not None]  # skipped rungs left out
    first = next((t for t in c["thresholds"] if t is not None), None)
    by_name = {r["name"]: r for r in manifest["rungs"]}
    model = lambda r: f"{manifest['name']}-{r}"  # noqa: E731
    config = {
        "version": "v0.3",
        "providers": {
            "defaults": {"default_model": model("dense")},
            "models": [{"name": model(r["name"]), "provider_model_id": model(r["name"]), "api_format": "openai",
                        "backend_refs": [{"name": model(r["name"]), "endpoint": "127.0.0.1:8000", "protocol": "http",
                                          "weight": 100}]} for r in manifest["rungs"]],
        },
        "routing": {
            "modelCards": [{"name": model(r["name"]), "param_size": f"{r['params'] / 1e6:.1f}M",
                            "quality_score": round(r["accuracy"]["mean"], 4),
                            "description": f"{r['name']}: {r['relative_flops']:.2f}x dense FLOPs/token, "
                                           f"{r['relative_cost']:.2f}x dense {manifest['costs']['kind']}"}
                           for r in manifest["rungs"]],
            "decisions": [{
                "name": "ladder_cascade",
                "priority": 100,
                "rules": {"operator": "OR", "conditions": []},
                "modelRefs": [{"model": model(r), "use_reasoning": False} for r in order],
                "algorithm": {"type": "confidence", "confidence": {
                    "confidence_method": SR_METHOD.get(c["signal"], "avg_logprob"),
                    "threshold": round(min(1.0, max(0.0, first)), 6) if first is not None else 0.0,
                    "escalation_order": "declared",
                    "on_error": "skip",
                }},
            }],
        },
    }
    header = (
        f"# vLLM Semantic Router fragment (config v0.3) for {manifest['name']}, generated by `pipeline.manifest`.\n"
        f"# Cascade {' > '.join(order)} chosen by {c['method']} on signal {c['signal']} "
        f"(epsilon {c['epsilon']}, delta {c['delta']}); per-rung thresholds {c['thresholds']}.\n"
        "# Semantic Router takes one threshold per decision and computes confidence from generated tokens,\n"
        "# so re-calibrate the threshold there; point backend_refs at where each rung is served.\n"
        "# Add your signals to `rules` (empty here: the decision applies to every query).\n"
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
        text = ("# Ladder deployment manifest: load with `python -m pipeline.serve --manifest " + args.out + "`\n"
                + yaml.safe_dump(raw, sort_keys=False))
        atomic_write_text(args.out, text)
        atomic_write_text(args.vllm_sr_out, vllm_semantic_router(raw))
        tracker.summary({"manifest/rungs": len(raw["rungs"]), "manifest/params_hash": raw["build"]["params_hash"]})
    st.done(read=f"{len(cfg.rungs)} rungs, router, cascade", wrote=f"{args.out}, {args.vllm_sr_out}")


if __name__ == "__main__":
    main()
