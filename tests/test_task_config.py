"""Task names in the config: checked fast, without lm-eval, naming allowed values and reasons."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.common.config import ConfigError, validate
from tests.conftest import REPO, tiny_config, write_params


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as exc:
        validate(tiny_config(overrides))
    return str(exc.value)


def test_unknown_task_names_the_allowed_values():
    msg = _error(["+data.tasks.arc_eazy={cap: 3}"])
    assert "data.tasks" in msg and "'arc_eazy' has no packaged copy" in msg
    for allowed in ("arc_easy", "hellaswag", "commonsense_qa", "social_iqa", "mmlu_continuation"):
        assert allowed in msg
    assert "source: hub" in msg


def test_task_without_shared_context_is_refused_with_the_reason():
    msg = _error(["+data.tasks.winogrande={cap: 3}"])
    assert "'winogrande' cannot be scored here" in msg and "multiple-input" in msg
    msg = _error(["+data.tasks.winogrande={cap: 3, source: hub}"])  # whatever the source
    assert "multiple-input" in msg


def test_hub_names_pass_config_and_are_left_to_the_data_stage():
    cfg = validate(tiny_config(["+data.tasks.mmlu_pro={cap: 4, source: hub}"]))
    assert cfg.data.tasks["mmlu_pro"].source == "hub"
    raw = tiny_config()
    raw["data"]["tasks"]["bad/name"] = {"source": "hub"}
    with pytest.raises(ConfigError, match="not an lm-eval task name"):
        validate(raw)


def test_mmlu_groups_and_subjects_are_offline_names():
    cfg = validate(tiny_config(["+data.tasks.mmlu_anatomy={cap: 4}", "+data.tasks.mmlu_stem_continuation={cap: 4}",
                                "+data.tasks.mmlu={cap: 4, split: test}"]))
    assert {"mmlu_anatomy", "mmlu_stem_continuation", "mmlu"} <= set(cfg.data.tasks)


def test_budget_and_text_set_keys_are_validated():
    assert "data.budget.tokens_per_task" in _error(["data.budget.tokens_per_task=0"])
    assert "data.heal.num_blocks" in _error(["data.heal.num_blocks=0"])
    assert "data.heldout_other.block_len" in _error(["data.heldout_other.block_len=2"])
    assert "data.tasks.piqa.tokens" in _error(["+data.tasks.piqa.tokens=-5"])


def test_validation_is_fast_and_never_imports_lm_eval(tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_config())
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from pipeline.common.config import load_config\n"
        f"load_config({str(params)!r})\n"
        "print(time.perf_counter() - t, 'lm_eval' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    secs, lm_eval_loaded, torch_loaded = out.stdout.split()
    assert lm_eval_loaded == "False" and torch_loaded == "False"
    assert float(secs) < 0.5, f"config validation took {float(secs):.2f}s"
