"""A temporary copy of this checkout as its own git repo with the tiny params: where the DVC tests
(test_e2e, test_queue) run the real commands a user runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, tiny_config, write_params

DVC = [sys.executable, "-m", "dvc"]


def sh(cmd: list[str], cwd: Path, env: dict, ok: bool = True) -> str:
    """Run `cmd`; assert it succeeded (or, with ok=False, failed); return stdout + stderr."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    else:
        assert res.returncode != 0, f"{' '.join(cmd)} should have failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def copy_repo(dst: Path) -> dict:
    """Copy the checkout's files (tracked and untracked, not ignored) to `dst`, with the tiny
    params, as one git commit; return the environment the commands run in."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    env = {
        **os.environ,
        # CI's way: this interpreter's venv first on PATH (bin/python then takes python3 from it).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
        "DVC_NO_ANALYTICS": "1",
    }
    for var in ("DVC_EXP_NAME", "LADDER_PYTHON", "DVC_STAGE", "DVC_ROOT"):
        env.pop(var, None)
    write_params(dst / "params.yaml", tiny_config())
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "tiny"], dst, env)
    return env
