"""The data stage on the tiny preset: text sets (shapes, disjointness), task items, stable splits."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from pipeline import data
from pipeline.evaluation.text import load_squad_backgrounds, split_passages
from tests.conftest import tiny_config, write_params

TEXT_SETS = ("calibration", "heldout", "heal", "heldout_other")


def test_calibration_and_heldout_passages_are_disjoint():
    passages = [f"passage number {i}" for i in range(1000)]
    calib, held = split_passages(passages, 0.2, "s")
    assert not set(calib) & set(held)
    assert len(calib) + len(held) == 1000
    assert 150 < len(held) < 250


def test_squad_backgrounds_are_distinct_wikipedia_paragraphs():
    paragraphs = load_squad_backgrounds()
    assert len(paragraphs) > 500 and len(set(paragraphs)) == len(paragraphs)
    assert all(len(p) > 100 and "\nQuestion:" not in p and not p.startswith("Background:") for p in paragraphs)


@pytest.fixture(scope="module")
def tiny_data(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    raw = tiny_config()
    params = write_params(tmp / "params.yaml", raw)
    data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(tmp / "data")])
    return raw, tmp


def _ngrams(blocks, n: int = 24) -> set[tuple[int, ...]]:
    return {tuple(row[i:i + n]) for row in blocks.tolist() for i in range(len(row) - n + 1)}


def test_text_sets_have_configured_shapes_and_are_disjoint(tiny_data):
    raw, tmp = tiny_data
    sets = {name: load_file(str(tmp / "data" / f"{name}.safetensors"))["input_ids"] for name in TEXT_SETS}
    for name, blocks in sets.items():
        cfg = raw["data"][name]
        assert tuple(blocks.shape) == (cfg["num_blocks"], cfg["block_len"]), name
    # No 24-token run is shared: the held-out sets never saw calibration or healing text.
    grams = {name: _ngrams(b) for name, b in sets.items()}
    assert not grams["heal"] & grams["heldout"]
    assert not grams["heal"] & grams["calibration"]
    assert not grams["calibration"] & grams["heldout"]
    assert not grams["heldout_other"] & (grams["calibration"] | grams["heal"] | grams["heldout"])

    summary = json.loads((tmp / "data" / "summary.json").read_text())
    for name in TEXT_SETS:
        assert summary[name]["shape"] == list(sets[name].shape)
    assert "disjoint" in summary["heal"]["rule"] and "another source" in summary["heldout_other"]["rule"]


def test_task_items_schema_and_summary(tiny_data):
    raw, tmp = tiny_data
    records = [json.loads(line) for line in (tmp / "data" / "tasks.jsonl").read_text().splitlines()]
    summary = json.loads((tmp / "data" / "summary.json").read_text())
    assert summary["items"] == len(records) == sum(t["total"] for t in summary["tasks"].values())
    assert len({r["id"] for r in records}) == len(records)
    assert {r["task"] for r in records} == set(raw["data"]["tasks"])
    assert {r["split"] for r in records} == {"router_train", "calibration", "test"}
    assert set(records[0]) == {"id", "task", "context", "choices", "gold", "split"}
    for t, cfg in raw["data"]["tasks"].items():
        s = summary["tasks"][t]
        assert s["total"] <= (cfg.get("cap") or 10**9)
        assert s["tokens"] > 0 and s["tokens_per_item"] == pytest.approx(s["tokens"] / s["total"], abs=0.1)
    assert summary["items_per_split"] == {
        s: sum(r["split"] == s for r in records) for s in ("router_train", "calibration", "test")}
    assert abs(sum(t["token_share"] for t in summary["tasks"].values()) - 1) < 1e-3


def _splits(path) -> dict[str, str]:
    return {r["id"]: r["split"] for r in map(json.loads, path.read_text().splitlines())}


def test_raising_a_cap_adds_items_and_moves_none(tiny_data, tiny_base, tmp_path):
    raw, tmp = tiny_data
    before = _splits(tmp / "data" / "tasks.jsonl")
    cap = raw["data"]["tasks"]["piqa"]["cap"]
    raw["data"]["tasks"]["piqa"]["cap"] = cap + 10
    raw["data"]["budget"]["tokens_per_task"] = None  # the cap alone decides here
    params = write_params(tmp_path / "params.yaml", raw)
    data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(tmp_path / "data")])
    after = _splits(tmp_path / "data" / "tasks.jsonl")
    assert set(before) <= set(after)
    assert all(after[i] == s for i, s in before.items())
    assert sum(i.startswith("piqa/") for i in after) == cap + 10


def test_unscorable_task_fails_before_any_text_work(tiny_base, tmp_path, monkeypatch):
    from pipeline.evaluation import task_catalog, text
    from pipeline.evaluation.tasks import TaskError

    monkeypatch.delitem(task_catalog.REFUSED, "winogrande")
    monkeypatch.setitem(task_catalog.OFFLINE, "winogrande", ("winogrande", "validation"))
    monkeypatch.setattr(text, "load_passages", lambda *_: pytest.fail("text was loaded before the task check"))
    raw = tiny_config(["+data.tasks.winogrande={cap: 4}"])
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(TaskError, match="winogrande.*multiple-input"):
        data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(tmp_path / "data")])
