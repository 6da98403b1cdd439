"""The composed config: every group option validates, bad input fails naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.common.config import CONF_DIR, ConfigError, compose, load_config, validate
from tests.conftest import REPO, tiny_config, write_params


def group_options() -> list[tuple[str, str]]:
    return [
        (g.name, f.stem)
        for g in sorted(CONF_DIR.iterdir()) if g.is_dir()
        for f in sorted(g.glob("*.yaml"))
    ]


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_validates(group, option):
    overrides = [f"+{group}={option}"] if group == "experiment" else [f"{group}={option}"]
    if (group, option) == ("model", "local"):
        overrides.append("model.source.path=/models/some-llama")  # its one mandatory key
    raw = compose(overrides)
    validate(raw)
    if group != "experiment":  # the option really was selected
        option_file = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())
        key = next(k for k in option_file if k != "defaults")
        assert raw[group][key] == option_file[key]


def test_committed_params_match_composed_conf():
    # `dvc repro` reads params.yaml; `dvc exp run` recomposes it from conf/. They must agree.
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed == compose(), "params.yaml is stale: run `make params` and commit it"


def test_tiny_preset_is_small_and_offline():
    cfg = validate(tiny_config())
    assert cfg.model.source.kind == "random"
    assert cfg.model.source.num_hidden_layers <= 4
    assert cfg.tracking.mode == "disabled"
    assert all(t.cap is not None and t.cap <= 50 for t in cfg.data.tasks.values())


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    return str(exc.value)


def test_unknown_key_is_named():
    msg = _error(tiny_config(["+data.calibraton={num_blocks: 2, block_len: 16}"]))
    assert "data.calibraton" in msg and "unknown key" in msg


def test_bad_choice_lists_allowed_values():
    msg = _error(tiny_config(["tracking.mode=sometimes"]))
    assert "tracking.mode" in msg
    for allowed in ("offline", "online", "disabled"):
        assert allowed in msg


def test_unknown_task_lists_allowed_tasks():
    msg = _error(tiny_config(["+data.tasks.mmlu_pro={cap: 3}"]))
    assert "data.tasks" in msg and "mmlu_pro" in msg and "arc_easy" in msg and "hellaswag" in msg


def test_unknown_source_kind_lists_kinds():
    msg = _error(tiny_config(["model.source.kind=ftp"]))
    assert "model.source" in msg and "'package'" in msg and "'random'" in msg


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.calibration.num_blocks=0", "data.calibration.num_blocks"),
        ("data.text.heldout_fraction=1.5", "data.text.heldout_fraction"),
        ("data.tasks.piqa.cap=-1", "data.tasks.piqa.cap"),
        ("cascade.delta=0", "cascade.delta"),
        ("seed=-3", "seed"),
        ("data.splits.test=0.5", "data.splits"),  # fractions no longer sum to 1
        ("model.source.num_key_value_heads=3", "model.source"),  # 4 q heads not divisible by 3
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    msg = _error(tiny_config([override]))
    assert f"  {key}" in msg, msg


def test_mandatory_value_left_unset_is_named():
    msg = _error(compose(["model=local"]))
    assert "model.source.path" in msg and "not set" in msg


def test_bad_rung_specs_fail():
    with pytest.raises(ConfigError, match=r"ladder.rungs.dense: 'dense' is reserved"):
        tiny_config(["+ladder.rungs.dense={parent: dense, target_flops: 0.5}"])  # refused while composing
    msg = _error(tiny_config(["+ladder.rungs.b={parent: dense, target_flops: 1.5}"]))
    assert "ladder.rungs.b.target_flops" in msg
    msg = _error(tiny_config(["+ladder.rungs.c={parent: dense}"]))
    assert "ladder.rungs.c" in msg and "needs a recipe or a target" in msg


def test_missing_params_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_stage_rejects_bad_config_before_heavy_work(tmp_path):
    raw = tiny_config(["tracking.mode=sometimes"])
    params = write_params(tmp_path / "params.yaml", raw)
    out = tmp_path / "base"
    # Run in a fresh interpreter and report whether torch was ever imported:
    # validation must come before heavy imports, so errors are immediate.
    probe = (
        "import sys\n"
        "from pipeline import base\n"
        "try:\n"
        f"    base.main(['--params', {str(params)!r}, '--out', {str(out)!r}])\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code, 'torch_loaded', 'torch' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert "exit 2 torch_loaded False" in res.stdout, res.stdout + res.stderr
    assert "tracking.mode" in res.stderr and "offline" in res.stderr
    assert not out.exists()


def test_compose_cli_writes_validated_params(tmp_path):
    out = tmp_path / "p.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "+experiment=tiny", "seed=7", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stderr
    assert load_config(out).seed == 7
    bad = subprocess.run(
        [sys.executable, "-m", "pipeline.params", "cascade.method=magic", "--out", str(tmp_path / "b.yaml")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "cascade.method" in bad.stderr
    assert not (tmp_path / "b.yaml").exists()


def test_held_out_allocator_scoring_leaves_blocks_to_fit_on():
    msg = _error(tiny_config(["ladder.allocator.eval_blocks=10"]))  # tiny: 10 calibration blocks
    assert "ladder.allocator.eval_blocks" in msg and "data.calibration.num_blocks" in msg and "eval_on=first" in msg
    validate(tiny_config(["ladder.allocator.eval_blocks=10", "ladder.allocator.eval_on=first"]))
