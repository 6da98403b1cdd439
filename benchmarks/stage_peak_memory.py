"""Peak memory per stage, each stage its own process (as DVC runs them), in one dtype.

    .venv/bin/python benchmarks/stage_peak_memory.py float32              # tiny graph, one rung
    .venv/bin/python benchmarks/stage_peak_memory.py bfloat16 --default   # default model, f90 only,
                                                                          # a smaller task budget
Extra Hydra overrides follow (e.g. `data.budget.tokens_per_task=1000`). The figures in the issue-13
closing note used, for both dtypes, `data.calibration.num_blocks=16 ladder.allocator.eval_blocks=4
ladder.allocator.gram_blocks=8 ladder.compensation.blocks=8` (same batch shapes, fewer batches:
bf16 matmuls are slow on this CPU). Prints each stage's own
"peak memory" figure from its done line (peak RSS on the CPU, torch.cuda.max_memory_allocated on a
GPU). Runs in a temporary directory; `--default` needs a few minutes per stage on 2 cores.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(WT))
from pipeline.common.config import compose  # noqa: E402  (after the sys.path insert)
from tests.conftest import tiny_config, write_params  # noqa: E402
from dvc.repo import Repo  # noqa: E402

# The default model with one rung and a small evaluation: memory depends on the model and the
# batch shapes, not on how many items are scored.
DEFAULT_SMALL = ["~ladder.rungs.f75", "~ladder.rungs.f60", "~ladder.rungs.f40",
                 "data.budget.tokens_per_task=1500"]
TINY_ONE_RUNG = ["~ladder.rungs.f80", "~ladder.rungs.wanda50", "~ladder.rungs.nm24",
                 "router.features=hidden_state", "router.epochs=20"]

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("dtype", choices=["float32", "bfloat16", "float16"])
ap.add_argument("--default", action="store_true", help="the default model (one rung, small evaluation)")
ap.add_argument("overrides", nargs="*")
args = ap.parse_intermixed_args()  # overrides may follow --default

root = Path(tempfile.mkdtemp(prefix=f"mem_{args.dtype}_"))
extra = [f"model.dtype={args.dtype}", "model.device=cpu", *args.overrides]
raw = compose([*DEFAULT_SMALL, *extra]) if args.default else tiny_config([*TINY_ONE_RUNG, *extra])
write_params(root / "params.yaml", raw)
shutil.copy(WT / "dvc.yaml", root / "dvc.yaml")
Repo.init(str(root), no_scm=True).close()
with Repo(str(root)) as repo:
    stages = [(s.name, s.cmd) for s in repo.index.stages]
env = dict(os.environ, PYTHONPATH=str(WT), WANDB_MODE="disabled", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
for name, cmd in stages:
    words = shlex.split(cmd)
    words[0] = str(WT / ".venv/bin/python")
    p = subprocess.run(words, cwd=root, env=env, capture_output=True, text=True)
    m = re.findall(r"\(([\d.]+)s, peak memory (\d+) MB (\w+)\)", p.stderr)
    print(f"{args.dtype} {name:16s} rc={p.returncode} "
          + (f"{m[-1][1]} MB {m[-1][2]} ({m[-1][0]} s)" if m else p.stderr[-500:]), flush=True)
    if p.returncode:
        break
shutil.rmtree(root, ignore_errors=True)
