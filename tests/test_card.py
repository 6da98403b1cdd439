"""Model cards: Hub metadata written by prune@<rung>, results added by evaluate@<rung>, read back by huggingface_hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load

from pipeline.common.config import CONF_DIR

BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def carded(tiny_graph) -> Path:
    """The tiny graph's outputs: its base names a Hub base model (model.base_model)."""
    return tiny_graph[0] / "artifacts"


def test_rung_card_front_matter_is_read_back_by_huggingface_hub(carded):
    path = carded / "ladder" / "dense" / "README.md"
    card = ModelCard.load(path)
    meta = metadata_load(path)
    assert meta == card.data.to_dict()
    assert card.data.base_model == BASE_ID  # from model.base_model, through provenance.json
    assert card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "ladder" in card.data.tags
    assert "model-index" not in meta  # nothing measured yet: results come with evaluate
    assert "ladder rung `dense`" in card.text and "## Recipe" in card.text


def test_evaluated_card_carries_the_measured_results(carded):
    path = carded / "eval" / "dense" / "model_card.md"
    card = ModelCard.load(path)
    metrics = json.loads((carded / "eval" / "dense" / "metrics.json").read_text())
    assert card.data.base_model == BASE_ID and card.data.license == "apache-2.0"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    tasks = [t for t in metrics["tasks"] if t != "mean"]
    assert len(got) == 2 * len(tasks)
    for t in tasks:
        for metric in ("acc", "acc_norm"):
            assert got[(t, metric)] == pytest.approx(metrics["tasks"][t][metric], abs=5e-5)
    arc = next(r for r in card.data.eval_results if r.dataset_name == "arc_easy")
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split) == ("allenai/ai2_arc", "ARC-Easy", "validation")
    assert metadata_load(path)["model-index"][0]["name"] == "tiny-llama-dense"
    mixed = ModelCard.load(carded / "eval" / "mixed" / "model_card.md").data
    assert "structured-pruning" in mixed.tags and mixed.eval_results[0].dataset_name == "arc_challenge"
    assert "## Results" in card.text and f"{metrics['perplexity']['perplexity']:.2f}" in card.text
    # The rung's own card (prune's output) is left as prune wrote it.
    assert "model-index" not in (carded / "ladder" / "dense" / "README.md").read_text()


def test_card_without_known_base_leaves_base_model_out():
    from pipeline.models.card import model_card

    report = {"parent": None, "relative": {"params": 1.0, "nonzero_params": 1.0, "flops": 1.0, "nonzero_flops": 1.0},
              "counts": {"layers": 4, "hidden": 64, "kv_heads": 2, "q_heads": 2, "mlp": 128}, "params": 10, "nonzero_params": 10,
              "flops_per_token": 20, "nonzero_flops_per_token": 20, "context_for_flops": 256, "layers_removed": []}
    text = model_card("dense", report, {"steps": []}, {"name": "tiny-llama", "license": None, "base_model": None})
    meta = ModelCard(text).data
    assert meta.base_model is None and meta.license is None and meta.library_name == "transformers"


def test_packaged_model_config_names_its_license_and_base():
    # The license is recorded in the model config (not hard-coded in the card writer); the packaged
    # default's must match what its GGUF file says.
    cfg = yaml.safe_load((CONF_DIR / "model" / "smollm2_135m.yaml").read_text())
    assert cfg["base_model"] == BASE_ID and cfg["license"] == "apache-2.0"


@pytest.mark.packaged
def test_packaged_model_license_matches_its_gguf_metadata():
    import importlib.util

    from gguf import GGUFReader

    cfg = yaml.safe_load((CONF_DIR / "model" / "smollm2_135m.yaml").read_text())
    spec = importlib.util.find_spec(cfg["source"]["module"])
    reader = GGUFReader(Path(list(spec.submodule_search_locations)[0]) / cfg["source"]["file"])
    field = reader.fields["general.license"]
    assert bytes(field.parts[field.data[0]]).decode() == cfg["license"]


def test_a_rung_used_as_base_passes_its_card_facts_on(carded, tmp_path):
    from pipeline.models.card import base_facts

    facts = base_facts(carded / "ladder" / "dense")  # no provenance.json there: its card speaks
    assert facts == {"name": "tiny-llama", "license": "apache-2.0", "base_model": BASE_ID}
    assert base_facts(carded / "base")["base_model"] == BASE_ID  # the base stage's provenance
    assert base_facts(tmp_path) == {"name": tmp_path.name}
