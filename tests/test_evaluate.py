"""Scoring matches a direct computation; records and metrics hold their schema; bad rungs fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from pipeline import evaluate
from pipeline.common.assets import AssetError
from pipeline.evaluate import record_for
from pipeline.evaluation.scoring import encode_item, encode_pair, score_choices
from tests.conftest import tiny_config, write_params
from tests.test_prune import tiny_ladder  # noqa: F401  (session fixture)
from tests.test_structured import tiny


@pytest.fixture(scope="module")
def tok(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)


def direct_loglik(model, tok, context: str, choice: str) -> float:
    """log P(choice | context) the slow, obvious way: one full sequence per choice."""
    ctx, cont = encode_pair(tok, context, choice)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def test_shared_context_scoring_equals_direct_computation(tok):
    model = tiny()  # float64
    model.resize_token_embeddings(len(tok))
    items = [
        ("Question: What do plants need to grow?\nAnswer:", [" sunlight", " darkness and cold", " salt"]),
        ("The cat sat on the", [" mat", " moon"]),
        ("A long passage about rivers. " * 5 + "\nQuestion: is water wet?\nAnswer:", [" no", " yes"]),
    ]
    enc = [encode_item(tok, c, ch, 512) for c, ch in items]
    for batch_tokens in (16, 4096):  # one item per pass, and all items padded into one pass
        got = score_choices(model, enc, batch_tokens=batch_tokens)
        for (c, choices), g in zip(items, got):
            want = [direct_loglik(model, tok, c, ch) for ch in choices]
            torch.testing.assert_close(torch.tensor(g["loglik"], dtype=torch.float64),
                                       torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-9)
            assert g["tokens"] == len(enc[items.index((c, choices))].context) + sum(
                len(x) for x in enc[items.index((c, choices))].continuations)


def test_encode_pair_moves_trailing_space_like_lm_eval(tok):
    ctx, cont = encode_pair(tok, "Answer: ", "yes")
    ctx2, cont2 = encode_pair(tok, "Answer:", " yes")
    assert (ctx, cont) == (ctx2, cont2)


def test_acc_norm_divides_by_choice_characters():
    item = {"id": "t/1", "task": "arc_easy", "split": "test", "gold": 1, "choices": [" a", " bbbb"]}
    r = record_for(item, {"loglik": [-2.0, -4.0], "greedy": [False, False], "tokens": 7})
    assert r["choice_chars"] == [1, 4]  # the leading delimiter is not counted, as in lm-eval
    assert r["pred"] == 0 and not r["correct"]  # -2 > -4
    assert r["pred_norm"] == 1 and r["correct_norm"]  # -2/1 < -4/4
    assert r["msp"] == pytest.approx(torch.tensor([-2.0, -4.0]).softmax(0).max().item())
    assert r["margin"] == pytest.approx(r["msp"] - (1 - r["msp"]))
    assert 0 <= r["entropy_normalised"] <= 1


RECORD_TYPES = {"id": str, "task": str, "split": str, "gold": int, "loglik": list, "pred": int, "correct": bool,
                "pred_norm": int, "correct_norm": bool, "msp": float, "margin": float, "entropy": float,
                "msp_norm": float, "margin_norm": float, "entropy_norm": float, "tokens": int}


@pytest.fixture(scope="module")
def evaluated(tiny_ladder):  # noqa: F811
    params = str(tiny_ladder / "params.yaml")
    out = tiny_ladder / "eval" / "mixed"
    evaluate.main(["--params", params, "--rung", "mixed", "--ladder-dir", str(tiny_ladder / "ladder"),
                   "--data", str(tiny_ladder / "data"), "--out", str(out)])
    return out


def test_records_schema(evaluated, tiny_ladder):  # noqa: F811
    records = [json.loads(l) for l in (evaluated / "records.jsonl").read_text().splitlines()]
    items = [json.loads(l) for l in (tiny_ladder / "data" / "tasks.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [i["id"] for i in items]
    for r, it in zip(records, items):
        for key, typ in RECORD_TYPES.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert len(r["loglik"]) == len(it["choices"]) and r["split"] == it["split"]
        assert 1 / len(it["choices"]) - 1e-9 <= r["msp"] <= 1 and r["correct"] == (r["pred"] == r["gold"])


def test_metrics_schema_and_consistency(evaluated):
    m = json.loads((evaluated / "metrics.json").read_text())
    records = [json.loads(l) for l in (evaluated / "records.jsonl").read_text().splitlines()]
    arc = [r for r in records if r["task"] == "arc_easy"]
    assert m["tasks"]["arc_easy"]["acc_norm"] == pytest.approx(sum(r["correct_norm"] for r in arc) / len(arc))
    assert m["perplexity"]["perplexity"] > 1 and m["perplexity"]["tokens_predicted"] == 4 * 63
    # The second held-out source (SQuAD's Wikipedia paragraphs), in the same format.
    assert set(m["perplexity_other"]) == set(m["perplexity"]) and m["perplexity_other"]["tokens_predicted"] == 4 * 63
    assert m["perplexity_other"]["perplexity"] > 1 and m["perplexity_other"] != m["perplexity"]
    c = m["cost"]
    assert c["checkpoint_bytes"] > 0 and c["peak_rss_mb"] > 0 and c["throughput_tokens_per_s"] > 0
    assert set(c["latency_ms"]) == {"16", "32"} and m["routing_cost"]["value"] == c["latency_ms"]["32"]


def test_missing_or_corrupt_weights_fail_clearly(tiny_ladder, tmp_path):  # noqa: F811
    params = str(write_params(tmp_path / "params.yaml", tiny_config()))
    ladder = tmp_path / "ladder"
    shutil.copytree(tiny_ladder / "ladder" / "mixed", ladder / "mixed")
    weights = ladder / "mixed" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a half-written download or copy
    args = ["--params", params, "--rung", "mixed", "--ladder-dir", str(ladder), "--data", str(tiny_ladder / "data"),
            "--out", str(tmp_path / "eval")]
    with pytest.raises(AssetError, match=r"rung mixed: .*model.safetensors: truncated .*dvc checkout --force"):
        evaluate.main(args)
    weights.unlink()
    with pytest.raises(AssetError, match=r"rung mixed: model.safetensors missing from"):
        evaluate.main(args)
    assert not (tmp_path / "eval").exists()


def test_pareto_front():
    from pipeline.report import pareto_front

    pts = [(1.0, 0.50), (0.5, 0.40), (0.7, 0.30), (0.4, 0.40), (0.2, 0.10)]
    # (0.7, 0.30) is dominated by (0.5, 0.40); (0.5, 0.40) by (0.4, 0.40).
    assert pareto_front(pts) == [4, 3, 0]


def test_report_stage_on_tiny_ladder(tiny_ladder, tmp_path):  # noqa: F811
    from pipeline import report

    raw = tiny_config()
    raw["ladder"]["rungs"] = {"mixed": raw["ladder"]["rungs"]["mixed"]}
    raw["rungs"] = ["dense", "mixed"]
    params = str(write_params(tmp_path / "params.yaml", raw))
    common = ["--params", params, "--ladder-dir", str(tiny_ladder / "ladder"), "--data", str(tiny_ladder / "data")]
    for r in raw["rungs"]:
        evaluate.main([*common, "--rung", r, "--out", str(tmp_path / "eval" / r)])
    report.main(["--params", params, "--ladder-dir", str(tiny_ladder / "ladder"), "--eval-dir", str(tmp_path / "eval"),
                 "--out", str(tmp_path / "report")])
    import csv

    rows = list(csv.DictReader((tmp_path / "report" / "ladder.csv").open()))
    assert [r["rung"] for r in rows] == ["dense", "mixed"]
    assert float(rows[0]["relative_flops"]) == 1.0 and float(rows[1]["relative_flops"]) < 1.0
    assert float(rows[0]["relative_latency"]) == 1.0
    m = json.loads((tmp_path / "eval" / "mixed" / "metrics.json").read_text())
    assert float(rows[1]["acc_norm_mean"]) == round(m["tasks"]["mean"]["acc_norm"], 4)
    assert (tmp_path / "report" / "pareto.png").stat().st_size > 1000
    for f in ("accuracy_vs_flops.csv", "accuracy_vs_latency.csv", "perplexity_vs_flops.csv"):
        assert (tmp_path / "report" / "plots" / f).exists()
