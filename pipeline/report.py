"""Stage `report`: the ladder at a glance, from every rung's evaluation.

Reads `artifacts/ladder/<rung>/pruning_report.json` and `artifacts/eval/<rung>/metrics.json`
for every rung; writes `--out` (default artifacts/report/):
- `ladder.csv`: one row per rung (shape, cost, perplexity, accuracy per task);
- `plots/accuracy_vs_flops.csv`, `plots/accuracy_vs_latency.csv`, `plots/perplexity_vs_flops.csv`
  (DVC plots, declared in dvc.yaml);
- `pareto.png`: mean accuracy against relative FLOPs and measured latency, Pareto front marked.
The same table and charts go to W&B.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--out", default="artifacts/report")


def ladder_rows(rungs: list[str], ladder_dir: Path, eval_dir: Path, routing_length: int) -> list[dict]:
    rows = []
    dense_latency = None
    for name in rungs:
        rep = json.loads((ladder_dir / name / "pruning_report.json").read_text())
        m = json.loads((eval_dir / name / "metrics.json").read_text())
        c = m["cost"]
        latency = c["latency_ms"][str(routing_length)]
        dense_latency = dense_latency or latency  # rungs[0] is dense
        row = {
            "rung": name, "parent": rep["parent"] or "",
            "layers": rep["counts"]["layers"], "hidden": rep["counts"]["hidden"],
            "kv_heads": rep["counts"]["kv_heads"], "q_per_kv": rep["counts"]["q_heads"], "mlp": rep["counts"]["mlp"],
            "params": c["params"], "nonzero_params": c["nonzero_params"],
            "flops_per_token": c["flops_per_token"], "relative_flops": rep["relative"]["flops"],
            "relative_nonzero_params": rep["relative"]["nonzero_params"],
            "checkpoint_mb": round(c["checkpoint_bytes"] / 2**20, 1),
            **{f"latency_ms_{k}": round(v, 2) for k, v in c["latency_ms"].items()},
            "relative_latency": latency / dense_latency,
            "throughput_tok_s": round(c["throughput_tokens_per_s"], 1),
            "peak_rss_mb": round(c["peak_rss_mb"], 1),
            "perplexity": round(m["perplexity"]["perplexity"], 3),
        }
        for task, v in m["tasks"].items():
            row[f"acc_norm_{task}"] = round(v["acc_norm"], 4)
            row[f"acc_{task}"] = round(v["acc"], 4)
        rows.append(row)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower cost and higher quality is better)."""
    front = []
    for i, (c, q) in enumerate(points):
        if not any((c2 <= c and q2 >= q) and (c2, q2) != (c, q) for c2, q2 in points):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _picture(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, xkey, xlabel in ((axes[0], "relative_flops", "FLOPs/token (x dense)"),
                             (axes[1], "relative_latency", "measured latency, 256-token prompt (x dense)")):
        pts = [(r[xkey], r["acc_norm_mean"]) for r in rows]
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="grey", label="Pareto front")
        for r, (x, y) in zip(rows, pts):
            structured = r["relative_nonzero_params"] > r["relative_flops"] - 0.05
            ax.scatter(x, y, s=60, marker="o" if structured else "s",
                       color="tab:blue" if structured else "tab:orange")
            ax.annotate(r["rung"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean acc_norm over tasks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("quality vs analytic cost (squares: zeros inside dense tensors)")
    axes[1].set_title("quality vs measured cost on this CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    st = begin("report", _args, argv)
    from pipeline.common.atomic import atomic_dir

    args, cfg = st.args, st.cfg
    rows = ladder_rows(cfg.rungs, Path(args.ladder_dir), Path(args.eval_dir), cfg.evaluate.routing_prompt_length)
    tasks = [k.removeprefix("acc_norm_") for k in rows[0] if k.startswith("acc_norm_")]
    with st.tracked() as tracker, atomic_dir(Path(args.out)) as tmp:
        (tmp / "ladder.csv").write_text(_csv(rows, list(rows[0])))
        (tmp / "plots").mkdir()
        acc = ["rung", "relative_flops", "relative_latency", *[f"acc_norm_{t}" for t in tasks]]
        (tmp / "plots" / "accuracy_vs_flops.csv").write_text(_csv(rows, acc))
        (tmp / "plots" / "accuracy_vs_latency.csv").write_text(_csv(rows, acc))
        (tmp / "plots" / "perplexity_vs_flops.csv").write_text(_csv(rows, ["rung", "relative_flops", "perplexity"]))
        _picture(rows, tmp / "pareto.png")
        if tracker.run is not None:
            import wandb

            table = wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            tracker.log({
                "ladder": table,
                "accuracy_vs_flops": wandb.plot.scatter(table, "relative_flops", "acc_norm_mean",
                                                        title="mean acc_norm vs FLOPs/token"),
                "accuracy_vs_latency": wandb.plot.scatter(table, "relative_latency", "acc_norm_mean",
                                                          title="mean acc_norm vs latency"),
                "perplexity_vs_flops": wandb.plot.scatter(table, "relative_flops", "perplexity",
                                                          title="perplexity vs FLOPs/token"),
                "pareto": wandb.Image(str(tmp / "pareto.png")),
            })
    st.done(read=f"{len(rows)} rungs' reports and metrics",
            wrote=f"{args.out}/ (ladder.csv, plots/*.csv, pareto.png)")


if __name__ == "__main__":
    main()
