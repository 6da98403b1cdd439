"""Stages find the project's Python without activation; `make setup` checks the Python range first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bin"))
import check_python  # noqa: E402


def test_every_stage_runs_the_launcher_not_a_bare_python():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, body in stages.items():
        cmd = body.get("do", body)["cmd"]
        assert cmd.startswith("bin/python -m pipeline."), f"stage '{name}': {cmd!r} depends on which python is on PATH"


def _fake(path: Path, says: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{says} $*"\n')
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path) -> Path:
    (tmp_path / "repo" / "bin").mkdir(parents=True)
    shutil.copy2(REPO / "bin" / "python", tmp_path / "repo" / "bin" / "python")
    return tmp_path / "repo"


def _launch(checkout: Path, path: str, **env) -> subprocess.CompletedProcess:
    # A fresh shell: no venv on PATH, nothing activated.
    return subprocess.run([str(checkout / "bin" / "python"), "-m", "pipeline.base"], capture_output=True,
                          text=True, env={"PATH": path, **env}, cwd=checkout)


def test_launcher_prefers_ladder_python_then_the_checkouts_venv_then_path(checkout, tmp_path):
    on_path = tmp_path / "path"
    _fake(on_path / "python3", "path-python3")
    _fake(tmp_path / "explicit", "explicit")
    path = f"{on_path}:/usr/bin:/bin"
    assert _launch(checkout, path).stdout.strip() == "path-python3 -m pipeline.base"
    _fake(checkout / ".venv" / "bin" / "python", "venv")
    assert _launch(checkout, path).stdout.strip() == "venv -m pipeline.base"
    assert _launch(checkout, path, LADDER_PYTHON=str(tmp_path / "explicit")).stdout.strip() == "explicit -m pipeline.base"


def test_launcher_without_any_python_says_what_to_do(checkout, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for tool in ("dirname",):  # what the launcher itself needs, without a python3 beside it
        os.symlink(shutil.which(tool), empty / tool)
    res = _launch(checkout, str(empty))
    assert res.returncode == 127 and "make setup" in res.stderr and "LADDER_PYTHON" in res.stderr


def test_the_repos_venv_runs_a_stage_from_a_fresh_shell():
    # This checkout's own launcher, PATH without any venv: the stage still gets the project's packages.
    if not (REPO / ".venv" / "bin" / "python").exists() and not os.environ.get("LADDER_PYTHON"):
        pytest.skip("this checkout has no .venv (make setup) and LADDER_PYTHON is unset")
    res = subprocess.run([str(REPO / "bin" / "python"), "-c", "import pydantic, yaml, pipeline.common.config; "
                          "import sys; print(sys.prefix)"], capture_output=True, text=True, cwd=REPO,
                         env={"PATH": "/usr/bin:/bin", "LADDER_PYTHON": os.environ.get("LADDER_PYTHON", "")})
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("version,ok", [((3, 11, 0), True), ((3, 11, 7), True), ((3, 12, 1), False),
                                        ((3, 10, 13), False), ((3, 13, 0), False)])
def test_python_range_comes_from_pyproject(version, ok):
    spec = check_python.requires_python()
    assert spec == ">=3.11,<3.12"
    assert check_python.allows(spec, version) is ok


def test_setup_check_message_names_range_interpreter_and_a_fix():
    msg = check_python.message(">=3.11,<3.12", (3, 12, 1), "/usr/bin/python3", ["/usr/bin/python3.11"])
    assert ">=3.11,<3.12" in msg and "/usr/bin/python3 is Python 3.12.1" in msg
    assert "make setup PYTHON=python3.11" in msg


def test_setup_check_script_exit_status(tmp_path):
    ok = subprocess.run([sys.executable, str(REPO / "bin" / "check_python.py")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    # An interpreter outside the range, simulated by a pyproject with another range.
    fake = tmp_path / "bin"
    fake.mkdir()
    shutil.copy(REPO / "bin" / "check_python.py", fake / "check_python.py")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent('''\
        [project]
        requires-python = ">=3.99"
    '''))
    bad = subprocess.run([sys.executable, str(fake / "check_python.py")], capture_output=True, text=True)
    assert bad.returncode == 1 and "needs Python >=3.99" in bad.stderr and "make setup" in bad.stderr
