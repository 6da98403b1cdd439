"""Benchmark: wall time to build every rung of the configured ladder on this machine.

    make bench-ladder            # = python benchmarks/build_ladder.py

Brings base/data/calibrate up to date (untimed unless --with-calibrate), then
force-rebuilds `dense` and every `prune@<rung>` through DVC, one at a time,
and prints seconds, FLOPs/token, params and non-zeros per rung, and the total.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml


def repro(stage: str, force: bool) -> float:
    cmd = ["dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-calibrate", action="store_true", help="also time the calibrate stage")
    args = ap.parse_args()
    rungs = list(yaml.safe_load(Path("params.yaml").read_text())["ladder"]["rungs"])
    subprocess.run(["dvc", "repro", "data"], check=True, stdout=subprocess.DEVNULL)
    calib = repro("calibrate", force=args.with_calibrate)
    rows, total = [], 0.0
    for name, stage in [("dense", "dense")] + [(r, f"prune@{r}") for r in rungs]:
        secs = repro(stage, force=True)
        total += secs if name != "dense" else 0.0
        rep = json.loads(Path(f"artifacts/ladder/{name}/pruning_report.json").read_text())
        rows.append((name, secs, rep))
    print(f"{'rung':<16}{'seconds':>9}{'FLOPs/token':>14}{'x dense':>9}{'params':>13}{'non-zeros':>13}{'nnz x':>8}  shape")
    for name, secs, r in rows:
        c = r["counts"]
        print(f"{name:<16}{secs:>9.1f}{r['flops_per_token']:>14,}{r['relative']['flops']:>9.3f}{r['params']:>13,}"
              f"{r['nonzero_params']:>13,}{r['relative']['nonzero_params']:>8.3f}  "
              f"L{c['layers']} h{c['hidden']} kv{c['kv_heads']}xq{c['q_heads']} mlp{c['mlp']}")
    print(f"calibrate: {calib:.1f}s{'' if args.with_calibrate else ' (up to date; not rebuilt)'}")
    print(f"all pruned rungs: {total:.1f}s ({total / 60:.1f} min) on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
