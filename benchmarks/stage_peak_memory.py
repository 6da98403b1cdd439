"""Peak memory per stage of the tiny graph, each stage its own process (as DVC runs them)."""
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
from tests.conftest import tiny_config, write_params  # noqa: E402  (after the sys.path insert)
from dvc.repo import Repo  # noqa: E402
dtype = sys.argv[1]
root = Path(tempfile.mkdtemp(prefix=f"mem_{dtype}_"))
raw = tiny_config(["~ladder.rungs.f80", "~ladder.rungs.wanda50", "~ladder.rungs.nm24",
                   "router.features=hidden_state", "router.epochs=20", f"model.dtype={dtype}", "model.device=cpu"])
write_params(root / "params.yaml", raw)
shutil.copy(WT / "dvc.yaml", root / "dvc.yaml")
Repo.init(str(root), no_scm=True).close()
with Repo(str(root)) as repo:
    stages = [(s.name, s.cmd) for s in repo.index.stages]
env = dict(os.environ, PYTHONPATH=str(WT), WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
for name, cmd in stages:
    words = shlex.split(cmd)
    words[0] = str(WT / ".venv/bin/python")
    p = subprocess.run(words, cwd=root, env=env, capture_output=True, text=True)
    m = re.findall(r"\(([\d.]+)s, peak memory (\d+) MB (\w+)\)", p.stderr)
    print(f"{dtype} {name:16s} rc={p.returncode} " + (f"{m[-1][1]} MB {m[-1][2]} ({m[-1][0]} s)" if m else p.stderr[-500:]), flush=True)
