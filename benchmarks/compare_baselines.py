"""Compare the default ladder with the baseline presets at matched FLOPs/token.

    make compare-baselines      # = python benchmarks/compare_baselines.py

Needs the default pipeline built (`dvc repro`). For each baseline ladder preset
(depth_only: ShortGPT-style layer dropping; width_only: heads + MLP channels;
magnitude: |w| pruning) it builds and evaluates its rungs with the same stage
entry points, outside DVC, under artifacts/baselines/<preset>/, reusing the
default build's base, data, calibration and dense rung. Then prints a markdown
table: each budget rung and each compression rung, default vs baselines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

PRESETS = ("depth_only", "width_only", "magnitude")
ROOT = Path("artifacts/baselines")


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def build(preset: str) -> dict[str, dict]:
    d = ROOT / preset
    d.mkdir(parents=True, exist_ok=True)
    params = d / "params.yaml"
    run("pipeline.common.config", f"ladder={preset}", "tracking=disabled", "--out", str(params))
    ladder = d / "ladder"
    ladder.mkdir(exist_ok=True)
    if not (ladder / "dense").exists():
        (ladder / "dense").symlink_to(Path("../../../ladder/dense"))
    results = {}
    for rung in yaml.safe_load(params.read_text())["ladder"]["rungs"]:
        out = d / "eval" / rung
        if not (out / "metrics.json").exists():
            run("pipeline.prune", "--params", str(params), "--rung", rung, "--ladder-dir", str(ladder))
            run("pipeline.evaluate", "--params", str(params), "--rung", rung, "--ladder-dir", str(ladder),
                "--out", str(out))
        results[rung] = summary(ladder / rung, out)
    return results


def summary(rung_dir: Path, eval_dir: Path) -> dict:
    rep = json.loads((rung_dir / "pruning_report.json").read_text())
    m = json.loads((eval_dir / "metrics.json").read_text())
    return {"flops": rep["relative"]["flops"], "nnz": rep["relative"]["nonzero_params"],
            "acc": m["tasks"]["mean"]["acc_norm"], "ppl": m["perplexity"]["perplexity"],
            "shape": "L{layers} h{hidden} kv{kv_heads}xq{q_heads} mlp{mlp}".format(**rep["counts"])}


def main() -> int:
    default = {r: summary(Path("artifacts/ladder") / r, Path("artifacts/eval") / r)
               for r in yaml.safe_load(Path("params.yaml").read_text())["rungs"]}
    baselines = {p: build(p) for p in PRESETS}
    cell = lambda s: (f"{s['acc']:.3f} / {s['ppl']:.1f} ({s['flops']:.2f}x FLOPs, {s['nnz']:.2f}x nnz)"  # noqa: E731
                      if s else "-")
    lines = ["| rung | default ladder (allocator) | depth only (ShortGPT) | width only | magnitude |",
             "|---|---|---|---|---|"]
    for rung, s in default.items():
        row = [cell(baselines[p].get(rung)) for p in PRESETS]
        lines.append(f"| `{rung}` | {cell(s)} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    print("cells: mean acc_norm over tasks / held-out perplexity (achieved cost)\n" + table)
    (ROOT / "comparison.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
