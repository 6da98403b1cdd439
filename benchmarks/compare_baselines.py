"""The default ladder against baselines at matched FLOPs, side by side, from one run.

    make compare-baselines                      # depth_only and width_only
    python benchmarks/compare_baselines.py --presets depth_only --previous /path/to/old/artifacts
    python benchmarks/compare_baselines.py --presets depth_only no_depth:ladder.compensation.depth=false

Needs the default pipeline built (`dvc repro`). Each baseline preset (`ladder=depth_only`:
ShortGPT-style layer dropping; `ladder=width_only`: heads and MLP channels, every layer kept) is
built and evaluated with the same stage entry points, outside DVC, under
`artifacts/baselines/<preset>/`; a preset `LABEL:KEY=VALUE[,KEY=VALUE...]` is the default config
with those Hydra overrides (e.g. the ladder before a change that a config key turns off); reusing the default build's base, data, calibration, teacher and
dense rung, so compensation and healing are the default ladder's. `--previous DIR` adds a column
for another build's rungs (its `artifacts/ladder/`, e.g. the ladder rebuilt from the commit before
a change), re-evaluated by today's evaluate stage on today's items.

Prints, per budget rung: FLOPs x dense, held-out perplexity on LAMBADA and on the other source
(SQuAD Wikipedia paragraphs, which no stage calibrates or heals on), mean acc_norm over the tasks
with its standard error, the share of dense's above-chance accuracy kept, and prefill and decode
time relative to dense, timed interleaved in this one process (every checkpoint in a different
rotation each round), and each ladder's acc_norm minus the default ladder's, paired over items. Writes the table to artifacts/baselines/comparison.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path("artifacts/baselines")


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def preset_overrides(preset: str) -> tuple[str, list[str]]:
    """(label, Hydra overrides): `depth_only` -> ladder=depth_only; `label:a=1,b=2` -> [a=1, b=2]."""
    label, sep, rest = preset.partition(":")
    return (label, rest.split(",")) if sep else (preset, [f"ladder={preset}"])


def build(preset: str) -> tuple[Path, Path]:
    """Build and evaluate the preset's rungs (skipping ones already evaluated); (ladder dir, eval dir)."""
    label, overrides = preset_overrides(preset)
    d = ROOT / label
    d.mkdir(parents=True, exist_ok=True)
    params = d / "params.yaml"
    run("pipeline.params", *overrides, "tracking=disabled", "--out", str(params))
    ladder, evals = d / "ladder", d / "eval"
    ladder.mkdir(exist_ok=True)
    if not (ladder / "dense").exists():
        (ladder / "dense").symlink_to(Path("../../../ladder/dense"))
    for rung in yaml.safe_load(params.read_text())["ladder"]["rungs"]:
        if not (evals / rung / "metrics.json").exists():
            run("pipeline.prune", "--params", str(params), "--rung", rung, "--ladder-dir", str(ladder))
            run("pipeline.evaluate", "--params", str(params), "--rung", rung, "--ladder-dir", str(ladder),
                "--out", str(evals / rung))
    return ladder, evals


def import_previous(src: Path, rungs: list[str], score_tasks: bool) -> tuple[Path, Path]:
    """Another build's rungs (its ladder/ directory), re-evaluated by today's evaluate stage.

    Older reports predate some fields: the copy's report gains `files_sha256` (what evaluate
    verifies) and today's count names; the weights are copied byte for byte."""
    import shutil

    from pipeline.models.checkpoint import file_digests

    d = ROOT / "previous"
    params = d / "params.yaml"
    d.mkdir(parents=True, exist_ok=True)
    run("pipeline.params", "tracking=disabled", "--out", str(params))
    ladder, evals = d / "ladder", d / "eval"
    ladder.mkdir(exist_ok=True)
    for rung_dir in [src / r for r in rungs if (src / r).is_dir()]:
        dst = ladder / rung_dir.name
        if not dst.exists():
            tmp = ladder / f".{rung_dir.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(rung_dir, tmp)
            rep = json.loads((tmp / "pruning_report.json").read_text())
            c = rep["counts"]
            c.setdefault("hidden", json.loads((tmp / "config.json").read_text())["hidden_size"])
            c.setdefault("q_heads", c.get("q_per_kv"))
            rep["files_sha256"] = file_digests(tmp)
            (tmp / "pruning_report.json").write_text(json.dumps(rep, indent=2) + "\n")
            tmp.rename(dst)
        if not (evals / rung_dir.name / "metrics.json").exists():
            if not score_tasks:
                _perplexity_only(dst, evals / rung_dir.name)
                continue
            run("pipeline.evaluate", "--params", str(params), "--rung", rung_dir.name, "--ladder-dir", str(ladder),
                "--out", str(evals / rung_dir.name))
    return ladder, evals


def _perplexity_only(rung_dir: Path, out: Path) -> None:
    """Perplexity on both held-out sets, no task scoring (a few seconds a rung instead of minutes)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from pipeline.evaluation.scoring import perplexity

    model = AutoModelForCausalLM.from_pretrained(rung_dir, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        ppl = {name: perplexity(model, load_file(f"artifacts/data/{name}.safetensors")["input_ids"], progress=False)
               for name in ("heldout", "heldout_other")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"perplexity": ppl["heldout"], "perplexity_other": ppl["heldout_other"],
                                                  "tasks": None}, indent=2) + "\n")


def records(eval_dir: Path) -> list[dict] | None:
    f = eval_dir / "records.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else None


def facts(rung_dir: Path, eval_dir: Path) -> dict | None:
    if not (eval_dir / "metrics.json").exists():
        return None
    rep = json.loads((rung_dir / "pruning_report.json").read_text())
    m = json.loads((eval_dir / "metrics.json").read_text())
    mean = (m["tasks"] or {}).get("mean") or {"acc_norm": None}  # None: perplexity only
    return {"dir": rung_dir, "flops": rep["relative"]["flops"], "ppl": m["perplexity"]["perplexity"],
            "ppl_other": (m.get("perplexity_other") or {}).get("perplexity"),
            "acc": mean["acc_norm"], "se": mean.get("acc_norm_se"), "above": mean.get("above_chance"),
            "smoke": (rep.get("smoke") or {}).get("completion", "").strip(), "records": records(eval_dir)}


def time_all(dirs: dict[str, Path], repeats: int, prompt_tokens: int = 256, decode_tokens: int = 16) -> dict:
    """Median prefill ms and decode ms/token per checkpoint, all timed interleaved in this process."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models.measure import time_decode, time_forward

    models = {k: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32, use_safetensors=True).eval()
              for k, p in dirs.items()}
    vocab = next(iter(models.values())).config.vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    keys = list(models)
    times = {k: ([], []) for k in keys}
    for rep in range(repeats + 1):  # the first round warms up
        for i in range(len(keys)):
            k = keys[(i + rep) % len(keys)]
            p = time_forward(models[k], prompt, logits_to_keep=1)
            d = time_decode(models[k], prompt, decode_tokens)
            if rep:
                times[k][0].append(p)
                times[k][1].append(d)
    return {k: (statistics.median(p), statistics.median(d)) for k, (p, d) in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=["depth_only", "width_only"],
                    help="ladder configs (conf/ladder/<name>.yaml), or LABEL:KEY=VALUE[,KEY=VALUE...] overrides")
    ap.add_argument("--previous", type=Path, help="another build's ladder/ directory (its rungs are re-evaluated)")
    ap.add_argument("--previous-tasks", action="store_true",
                    help="re-score the previous rungs on the tasks too (minutes a rung); default: perplexity only")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from heal_curve import paired_acc_norm_diff

    rungs = [r for r in yaml.safe_load(Path("params.yaml").read_text())["rungs"] if r != "dense"]
    columns = {"new": (Path("artifacts/ladder"), Path("artifacts/eval"))}
    if args.previous:
        columns["previous"] = import_previous(args.previous, rungs, args.previous_tasks)
    for p in args.presets:
        columns[preset_overrides(p)[0]] = build(p)
    dense = facts(Path("artifacts/ladder/dense"), Path("artifacts/eval/dense"))
    table = {r: {c: facts(lad / r, ev / r) for c, (lad, ev) in columns.items()} for r in rungs}
    dirs = {"dense": dense["dir"], **{f"{c}/{r}": f["dir"] for r, row in table.items() for c, f in row.items() if f}}
    speed = time_all(dirs, args.repeats)
    d_pre, d_dec = speed["dense"]

    lines = [f"Dense: ppl {dense['ppl']:.1f} (other source {dense['ppl_other']:.1f}), mean acc_norm "
             f"{dense['acc']:.3f} ± {dense['se']:.3f}, above chance {dense['above']:.3f}; prefill "
             f"{d_pre:.1f} ms (256 tokens), decode {d_dec:.2f} ms/token (median of {args.repeats}, interleaved).",
             "", "| rung | ladder | FLOPs x | ppl LAMBADA | ppl other (x dense) | mean acc_norm ± SE | above-chance kept "
             "| − new (paired SE) | prefill x | decode x | smoke |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, row in table.items():
        new = row.get("new")
        for c, f in row.items():
            if f is None:
                lines.append(f"| `{r}` | {c} | - | - | - | - | - | - | - | - | not built |")
                continue
            paired = ""
            if c != "new" and new and new["records"] and f["records"]:
                diff, diff_se = paired_acc_norm_diff(f["records"], new["records"])
                paired = f"{diff:+.3f} ({diff_se:.3f})"
            pre, dec = speed[f"{c}/{r}"]
            other = f"{f['ppl_other']:.1f} ({f['ppl_other'] / dense['ppl_other']:.2f}x)" if f["ppl_other"] else "-"
            kept = f"{f['above'] / dense['above']:.0%}" if f["above"] is not None else "-"
            se = f" ± {f['se']:.3f}" if f["se"] is not None else ""
            acc = f"{f['acc']:.3f}{se}" if f["acc"] is not None else "not re-scored"
            lines.append(f"| `{r}` | {c} | {f['flops']:.3f} | {f['ppl']:.1f} | {other} | {acc} | {kept} | {paired} "
                         f"| {pre / d_pre:.2f} | {dec / d_dec:.2f} | {f['smoke'][:40]!r} |")
    text = "\n".join(lines)
    print(text)
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "comparison.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
