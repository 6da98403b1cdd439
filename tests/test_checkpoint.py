"""Checkpoint digests: every file a loader reads, sharded weights and index included."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline.common.assets import AssetError
from pipeline.models.checkpoint import ChecksumError, check_rung_files, file_digests, verify_rung


@pytest.fixture(scope="module")
def sharded(tiny_base, tmp_path_factory):
    """The tiny base saved in several safetensors shards, with a report as the prune stage writes it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("sharded") / "f50"
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, use_safetensors=True)
    model.save_pretrained(d, max_shard_size="2MB")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(d)
    (d / "pruning_report.json").write_text(json.dumps({"rung": "f50", "files_sha256": file_digests(d)}))
    (d / "README.md").write_text("model card")
    return d


def test_digests_cover_every_shard_the_index_and_the_tokenizer(sharded):
    digests = file_digests(sharded)
    shards = sorted(p.name for p in sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and "model.safetensors.index.json" in digests
    assert set(shards) <= set(digests)
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(digests)
    assert not {"pruning_report.json", "README.md"} & set(digests)  # documentation, not loaded
    assert verify_rung(sharded)["rung"] == "f50"


def test_a_changed_missing_or_extra_shard_is_refused(sharded, tmp_path):
    d = tmp_path / "f50"
    shutil.copytree(sharded, d)
    digests = json.loads((d / "pruning_report.json").read_text())["files_sha256"]
    shard = sorted(d.glob("model-*-of-*.safetensors"))[-1]
    index = d / "model.safetensors.index.json"
    index.write_text(index.read_text().replace(shard.name, shard.name.replace("model-", "other-")))
    with pytest.raises(ChecksumError, match=r"model.safetensors.index.json has sha256 .* but the build recorded"):
        check_rung_files(d, digests, "rung f50", "restore it")
    shutil.copy(sharded / index.name, index)
    shard.unlink()
    with pytest.raises(AssetError, match=rf"rung f50: {shard.name} missing from .*; restore it"):
        check_rung_files(d, digests, "rung f50", "restore it")
    shutil.copy(sharded / shard.name, shard)
    (d / "model.bin").write_bytes(b"\x80\x02}q\x00.")  # a pickle a loader might be pointed at
    with pytest.raises(ChecksumError, match=r"model.bin in .* were not written by the build"):
        check_rung_files(d, digests, "rung f50", "restore it")


def test_a_report_from_before_file_digests_says_how_to_rebuild(sharded, tmp_path):
    d = tmp_path / "f50"
    shutil.copytree(sharded, d)
    (d / "pruning_report.json").write_text(json.dumps({"rung": "f50", "weights_sha256": {}}))
    with pytest.raises(AssetError, match=r"records no files_sha256 .*rebuild it with `dvc repro prune@f50`"):
        verify_rung(d)


def test_saved_tokenizers_do_not_record_the_shell_they_were_loaded_in(tiny_base, tmp_path):
    # transformers copies `local_files_only` (set from HF_HUB_OFFLINE) into tokenizer_config.json;
    # left in, a rung built from another shell hashes differently and DVC reruns what follows.
    from transformers import AutoTokenizer

    from pipeline.models.checkpoint import save_tokenizer

    assert "local_files_only" not in json.loads((tiny_base / "tokenizer_config.json").read_text())
    plain, ours = tmp_path / "plain", tmp_path / "ours"
    AutoTokenizer.from_pretrained(tiny_base, local_files_only=True).save_pretrained(plain)
    assert json.loads((plain / "tokenizer_config.json").read_text())["local_files_only"] is True  # the leak
    save_tokenizer(AutoTokenizer.from_pretrained(tiny_base, local_files_only=True), ours)
    assert "local_files_only" not in json.loads((ours / "tokenizer_config.json").read_text())
    assert (ours / "tokenizer.json").read_bytes() == (plain / "tokenizer.json").read_bytes()
