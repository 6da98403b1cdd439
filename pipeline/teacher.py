"""Stage `teacher`: the dense model's next-token distribution, cached once for every rung.

Reads the base checkpoint and `artifacts/data/` (healing and calibration blocks); writes `--out`
(default artifacts/teacher/), each a safetensors file of `input_ids` [N, L], `topk_ids` [N, L, k]
and `topk_logp` [N, L, k] (the dense model's top-k log-probabilities at every position):
- `heal.safetensors`: the healing blocks minus the last `ladder.heal.val_blocks`;
- `heal_val.safetensors`: those held-out healing blocks (early stopping);
  both only when `ladder.heal.enabled` (the healing set is most of this stage's time: ~150 s of
  ~160 s on the default build, spent for nothing when no rung heals);
- `allocator.safetensors`: the `ladder.allocator.eval_blocks` calibration blocks the allocator
  scores candidate cuts on (the last ones by default: `pipeline/pruning/calibration_blocks.py`);
- `summary.json`: shapes, k, the probability mass the top-k captures, seconds.
Healing and the allocator read these instead of running the dense model next to each rung.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--base", default="artifacts/base")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--out", default="artifacts/teacher")


def healing_sets(model, heal_blocks, n_val: int, k: int) -> dict:
    """The dense model's top-k on the healing blocks: `heal` (all but the last `n_val`) and `heal_val`."""
    from pipeline.pruning.distill import teacher_topk

    return {"heal": teacher_topk(model, heal_blocks[:-n_val], k, desc="teacher: healing blocks"),
            "heal_val": teacher_topk(model, heal_blocks[-n_val:], k, desc="teacher: held-out healing blocks")}


def main(argv: list[str] | None = None) -> None:
    st = begin("teacher", _args, argv)
    cfg, args = st.cfg, st.args
    ladder = cfg.ladder

    from safetensors.torch import load_file, save_file

    from pipeline.common.atomic import atomic_dir
    from pipeline.common.timings import timings_path, write_timings
    from pipeline.models.loading import load_causal_lm
    from pipeline.pruning.calibration_blocks import split_blocks
    from pipeline.pruning.distill import captured_mass, teacher_topk

    data = Path(args.data)
    heal_blocks = load_file(str(data / "heal.safetensors"))["input_ids"]
    calib = load_file(str(data / "calibration.safetensors"))["input_ids"]
    n_val = ladder.heal.val_blocks
    if ladder.heal.enabled and n_val >= len(heal_blocks):
        raise SystemExit(f"teacher: ladder.heal.val_blocks={n_val} leaves no healing blocks "
                         f"(data has {len(heal_blocks)}); lower it or raise data.heal.num_blocks")
    if ladder.allocator.eval_blocks > len(calib):
        raise SystemExit(f"teacher: ladder.allocator.eval_blocks={ladder.allocator.eval_blocks} exceeds the "
                         f"{len(calib)} calibration blocks (data.calibration.num_blocks)")
    k = ladder.teacher.topk
    with st.tracked() as tracker:
        model = load_causal_lm(args.base, cfg.model)
        t0 = time.perf_counter()
        sets = healing_sets(model, heal_blocks, n_val, k) if ladder.heal.enabled else {}
        sets["allocator"] = teacher_topk(model, split_blocks(calib, ladder.allocator)[0], k, desc="teacher: allocator blocks")
        secs = time.perf_counter() - t0
        summary = {"topk": k, "heal_sets": bool(ladder.heal.enabled),
                   "sets": {name: {"shape": list(t["input_ids"].shape), "captured_mass": round(captured_mass(t), 4)}
                            for name, t in sets.items()}}
        with atomic_dir(Path(args.out)) as tmp:
            for name, t in sets.items():
                save_file({key: v.contiguous() for key, v in t.items()}, str(tmp / f"{name}.safetensors"))
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_timings(timings_path(Path(args.out).parent, "teacher"), {"topk_pass": round(secs, 1)})
        tracker.summary({f"teacher/{n}/captured_mass": v["captured_mass"] for n, v in summary["sets"].items()})
    healing = f"{len(heal_blocks)} healing + " if ladder.heal.enabled else "healing off, "
    st.done(read=f"{args.base}, {healing}{ladder.allocator.eval_blocks} allocator blocks",
            wrote=f"{args.out}/ (top-{k}; captured mass "
            + ", ".join(f"{n} {v['captured_mass']:.3f}" for n, v in summary["sets"].items()) + f"; {secs:.0f}s)")


if __name__ == "__main__":
    main()
