"""Benchmark: wall time to evaluate every rung on this machine (the 15-minute target).

    make bench-eval             # = python benchmarks/evaluate_ladder.py

Force-reruns every `evaluate@<rung>` through DVC, one at a time, and prints the
seconds, scoring throughput and item counts per rung, and the total.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml


def main() -> int:
    rungs = yaml.safe_load(Path("params.yaml").read_text())["rungs"]
    subprocess.run(["dvc", "repro", *[f"prune@{r}" for r in rungs[1:]], "dense"], check=True, stdout=subprocess.DEVNULL)
    total = 0.0
    print(f"{'rung':<16}{'seconds':>9}{'items':>7}{'tokens':>9}{'tok/s':>8}")
    for r in rungs:
        t = time.perf_counter()
        subprocess.run(["dvc", "repro", "--force", "--single-item", f"evaluate@{r}"], check=True,
                       stdout=subprocess.DEVNULL)
        secs = time.perf_counter() - t
        total += secs
        s = json.loads(Path(f"artifacts/eval/{r}/metrics.json").read_text())["scoring"]
        print(f"{r:<16}{secs:>9.1f}{s['items']:>7}{s['tokens']:>9}{s['tokens_per_second']:>8.0f}")
    splits = {}
    for line in Path("artifacts/data/tasks.jsonl").read_text().splitlines():
        sp = json.loads(line)["split"]
        splits[sp] = splits.get(sp, 0) + 1
    print(f"items per split: {splits}")
    print(f"all rungs: {total:.1f}s ({total / 60:.1f} min) on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
