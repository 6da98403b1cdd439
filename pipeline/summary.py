"""Stage `summary`: the few figures users compare across experiments, in one small metrics file.

Reads every rung's `artifacts/eval/<rung>/metrics.json` and the router's and cascade's
`metrics.json`; writes `--out` (default artifacts/summary.json), the only file dvc.yaml declares as
metrics, so `dvc exp show` and `dvc metrics diff` show one column per figure:
- `acc_norm.<rung>`: mean acc_norm over the tasks (all items), every rung;
- `perplexity.<rung>`: held-out perplexity, every rung;
- `test.dense`, `test.router`, `test.cascade`: accuracy on the test split of always-dense, the router
  and the deployed cascade (`cascade.method`); `test.router_cost`, `test.cascade_cost`: their mean
  cost relative to dense.
- `bound.router`, `bound.cascade`: the calibration upper bound on the accuracy drop each was
  certified with (Learn-then-Test at epsilon, delta).
Two columns per rung plus seven: 17 for the default ladder's five rungs. The per-rung detail stays
in `artifacts/eval/<rung>/metrics.json` (`dvc metrics show artifacts/eval/f90/metrics.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--router", default="artifacts/router/metrics.json")
    ap.add_argument("--cascade", default="artifacts/cascade/metrics.json")
    ap.add_argument("--out", default="artifacts/summary.json")


def _get(path: Path, data: dict, *keys: str):
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            raise SystemExit(f"summary: {path} has no {'.'.join(keys)}")
        data = data[k]
    # Rates on the test split carry a bootstrap interval: {"value", "lo", "hi"}; the column is the value.
    return data["value"] if isinstance(data, dict) and "value" in data else data


def summarise(rungs: list[str], eval_dir: Path, router: Path, cascade: Path, cascade_method: str) -> dict:
    per_rung = {r: json.loads((eval_dir / r / "metrics.json").read_text()) for r in rungs}
    rm, cm = json.loads(router.read_text()), json.loads(cascade.read_text())
    paths = {r: eval_dir / r / "metrics.json" for r in rungs}
    return {
        "acc_norm": {r: round(_get(paths[r], m, "tasks", "mean", "acc_norm"), 4) for r, m in per_rung.items()},
        "perplexity": {r: round(_get(paths[r], m, "perplexity", "perplexity"), 3) for r, m in per_rung.items()},
        "test": {
            "dense": round(_get(router, rm, "test", "always_dense", "accuracy"), 4),
            "router": round(_get(router, rm, "test", "router", "accuracy"), 4),
            "router_cost": round(_get(router, rm, "test", "router", "relative_cost"), 4),
            "cascade": round(_get(cascade, cm, "test", cascade_method, "accuracy"), 4),
            "cascade_cost": round(_get(cascade, cm, "test", cascade_method, "relative_cost"), 4),
        },
        # The certificates: the upper bound on the accuracy drop each strategy was certified with on
        # calibration (Learn-then-Test at epsilon, delta); None when the router was not certified.
        "bound": {
            "router": _bound(_get(router, rm, "certified")),
            "cascade": _bound(_get(cascade, cm, "certified")),
        },
    }


def _bound(certified: dict) -> float | None:
    b = certified.get("calibration_drop_upper_bound")
    return None if b is None else round(b, 4)


def flatten(summary: dict) -> dict:
    return {f"{group}.{k}": v for group, values in summary.items() for k, v in values.items()}


def main(argv: list[str] | None = None) -> None:
    st = begin("summary", _args, argv)
    from pipeline.common.atomic import atomic_write_text

    args, cfg = st.args, st.cfg
    with st.tracked() as tracker:
        summary = summarise(cfg.rungs, Path(args.eval_dir), Path(args.router), Path(args.cascade), cfg.cascade.method)
        atomic_write_text(args.out, json.dumps(summary, indent=2) + "\n")
        tracker.summary({k.replace(".", "/"): v for k, v in flatten(summary).items()})  # W&B sections by "/"
        tracker.table("summary", [{"rung": r, "acc_norm": summary["acc_norm"][r], "perplexity": summary["perplexity"][r]}
                                  for r in cfg.rungs])
    st.done(read=f"{len(cfg.rungs)} rungs' metrics, router, cascade",
            wrote=f"{args.out} ({len(flatten(summary))} figures)")


if __name__ == "__main__":
    main()
