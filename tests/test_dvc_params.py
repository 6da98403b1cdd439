"""Every config option, and every `dvc exp run` command in the README, composes complete params for DVC.

Composition goes through DVC's own code path for `dvc exp run -S` (`dvc.utils.hydra.compose_and_dump`,
with the arguments DVC derives from `.dvc/config`), and the check is DVC's own: each stage's
`ParamsDependency` hashes its declared keys, which raises `MissingParamsError` ("Parameters
'ladder.heal' are missing from 'params.yaml'") exactly as `dvc exp run` would before running it.
"""

from __future__ import annotations

import functools
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.common.config import CONF_DIR, compose, validate
from tests.conftest import REPO

# Keys an option leaves mandatory ('???'), with a value a user would pass.
MANDATORY = {("model", "local"): ["model.source.path=/models/some-llama"]}


def group_options() -> list[list[str]]:
    out = []
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        for option in sorted(group.glob("*.yaml")):
            sel = f"+{group.name}={option.stem}" if group.name == "experiment" else f"{group.name}={option.stem}"
            out.append([sel, *MANDATORY.get((group.name, option.stem), [])])
    return out


def readme_experiments() -> list[list[str]]:
    """The `-S` overrides of every `dvc exp run` line in the README's code blocks."""
    text = (REPO / "README.md").read_text()
    runs = []
    for block in text.split("```")[1::2]:
        for line in block.replace("\\\n", " ").splitlines():  # join shell line continuations
            line = line.strip().removeprefix(".venv/bin/")
            if not line.startswith("dvc exp run"):  # `$ dvc exp run ...` shows output, often an error
                continue
            words = shlex.split(line, comments=True)
            if words[:3] == ["dvc", "exp", "run"]:
                runs.append([w for flag, w in zip(words, words[1:]) if flag in ("-S", "--set-param")])
    return runs


@functools.cache
def hydra_settings() -> dict:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return dict(repo.config.get("hydra", {}))


def dvc_compose(overrides: list[str], out: Path) -> None:
    """What `dvc exp run -S ...` does to params.yaml (dvc/repo/experiments/queue/base.py `_update_params`)."""
    from dvc.utils.hydra import compose_and_dump

    hydra = hydra_settings()
    assert hydra.get("enabled"), ".dvc/config must enable DVC's Hydra composition"
    compose_and_dump(
        str(out),
        str(Path(REPO, hydra.get("config_dir", "conf"))),
        hydra.get("config_module"),
        hydra.get("config_name", "config"),
        str(Path(REPO, hydra.get("plugins_path", ""))),
        overrides,
    )


def missing_stage_params(repo_dir: Path) -> list[str]:
    """DVC's own check, per stage of dvc.yaml resolved against repo_dir/params.yaml."""
    from dvc.dependency.param import MissingParamsError, ParamsDependency
    from dvc.repo import Repo

    problems = []
    with Repo(str(repo_dir)) as repo:
        stages = list(repo.index.stages)
        assert stages, "dvc.yaml resolved to no stages"
        for stage in stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    try:
                        dep.get_hash()
                    except MissingParamsError as exc:
                        problems.append(f"{stage.name}: {exc}")
    return problems


def composed_repo(tmp_path: Path, overrides: list[str]) -> Path:
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    repo.mkdir()
    Repo.init(str(repo), no_scm=True).close()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    dvc_compose(overrides, repo / "params.yaml")
    return repo


def _check(tmp_path: Path, overrides: list[str]) -> None:
    repo = composed_repo(tmp_path, overrides)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    assert not missing_stage_params(repo), (
        f"`dvc exp run {' '.join('-S ' + o for o in overrides)}` would stop:\n"
        + "\n".join(missing_stage_params(repo))
        + "\nGive the option the keys it lacks (a ladder option inherits settings/default@_here_)."
    )
    validate(raw)  # what every stage checks first
    assert raw == compose(overrides), "DVC's composition and `make params` (pipeline.params) disagree"


@pytest.mark.parametrize("overrides", group_options(), ids=lambda o: o[0])
def test_every_group_option_composes_every_declared_param(tmp_path, overrides):
    _check(tmp_path, overrides)


@pytest.mark.parametrize("overrides", readme_experiments(), ids=lambda o: " ".join(o) or "<no -S>")
def test_readme_experiment_commands_compose(tmp_path, overrides):
    _check(tmp_path, overrides)


def test_readme_has_experiment_commands():
    assert readme_experiments(), "README lists no `dvc exp run` command in a code block"


def test_the_check_catches_a_missing_param(tmp_path):
    # The check itself can fail: drop a key a prune stage declares.
    repo = composed_repo(tmp_path, ["+experiment=tiny"])
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    del raw["ladder"]["heal"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    problems = missing_stage_params(repo)
    assert problems and all("ladder.heal" in p for p in problems)
    assert {p.split(":")[0] for p in problems} == {"teacher", *(f"prune@{r}" for r in raw["ladder"]["rungs"])}


@pytest.mark.parametrize("override,says", [
    ("ladder.rungs.f90.parent=nope", "ladder.rungs.f90.parent: 'nope' is not a rung"),
    ("ladder.rungs.f90.parent=f40", "ladder.rungs.f90.parent: 'f40' is listed after it"),  # f40 -> f60 -> f75 -> f90
])
def test_bad_parent_is_refused_while_dvc_composes(tmp_path, override, says):
    # The composition is the hook DVC runs before it touches the workspace: params.yaml stays as it
    # was, and no stage runs (so no rung output is deleted).
    out = tmp_path / "params.yaml"
    out.write_text("untouched\n")
    with pytest.raises(Exception, match=says):
        dvc_compose([override], out)
    assert out.read_text() == "untouched\n"
