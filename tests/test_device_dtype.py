"""`model.dtype` and `model.device` are honoured by every stage from `base` to `serve` (issue 13).

The tiny graph runs once, end to end, in bfloat16 with `model.device=cuda` on a machine without a
GPU: torch is told a GPU exists, and the loading seam (`pipeline/models/loading.py`, `place`)
records the device each model was asked onto instead of moving it. Every model transformers
builds (`PreTrainedModel.from_pretrained` / `_from_config`) is recorded too, so a stage that
loads a model itself, in float32 or on the CPU, shows up as a model that is not bf16 or that
never went through `place`. No GPU is needed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ONE_RUNG, run_tiny_graph, tiny_config, write_params

# Every stage that loads a model (the rung is the tiny graph's one rung, `mixed`).
LOADING_STAGES = {"base", "calibrate", "teacher", "dense", "prune@mixed", "evaluate@dense", "evaluate@mixed",
                  "speed", "router"}


class Seam:
    """Records every model transformers builds, and every `place` call (dtype, requested device)."""

    def __init__(self, mp: pytest.MonkeyPatch, move: bool = True):
        from transformers import PreTrainedModel

        from pipeline.models import loading

        self.built: list[tuple[str, object, dict]] = []  # (stage, model, kwargs): models kept alive, ids stay unique
        self.placed: list[tuple[str, object, torch.dtype, str]] = []
        from_pretrained = PreTrainedModel.from_pretrained.__func__
        from_config = PreTrainedModel._from_config.__func__
        place = loading.place

        def stage() -> str:
            return os.environ.get("DVC_STAGE", "?")

        def rec_from_pretrained(cls, *args, **kw):
            asked = dict(kw)
            if not move:
                kw.pop("device_map", None)  # no GPU here: load on the CPU, the request is recorded
            m = from_pretrained(cls, *args, **kw)
            self.built.append((stage(), m, asked))
            return m

        def rec_from_config(cls, *args, **kw):
            m = from_config(cls, *args, **kw)
            self.built.append((stage(), m, dict(kw)))
            return m

        def rec_place(model, device):
            self.placed.append((stage(), model, dtype_of(model), str(device)))
            return place(model, device) if move else model

        mp.setattr(PreTrainedModel, "from_pretrained", classmethod(rec_from_pretrained))
        mp.setattr(PreTrainedModel, "_from_config", classmethod(rec_from_config))
        mp.setattr(loading, "place", rec_place)

    def problems(self, dtype: torch.dtype, device: str) -> list[str]:
        """Every model that is not in `dtype`, or did not go onto `device` through the seam."""
        out = []
        placed = {id(m): (s, d, dev) for s, m, d, dev in self.placed}
        for s, m, kw in self.built:
            if id(m) not in placed:
                out.append(f"{s}: {type(m).__name__} was loaded without going through loading.place")
            if dtype_of(m) != dtype:
                out.append(f"{s}: {type(m).__name__} is {dtype_of(m)}, config asks {dtype}")
        for s, m, d, dev in self.placed:
            if d != dtype:
                out.append(f"{s}: {type(m).__name__} placed in {d}, config asks {dtype}")
            if dev != device:
                out.append(f"{s}: {type(m).__name__} placed on {dev}, config asks {device}")
        return out


def dtype_of(model) -> torch.dtype | str:
    kinds = {p.dtype for p in model.parameters()}
    return kinds.pop() if len(kinds) == 1 else f"mixed {sorted(map(str, kinds))}"


def fake_gpu(mp: pytest.MonkeyPatch) -> None:
    """torch says one CUDA device exists (nothing is ever moved there: the seam does not move)."""
    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture(scope="module")
def bf16_graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16_graph")
    mp = pytest.MonkeyPatch()
    try:
        fake_gpu(mp)
        seam = Seam(mp, move=False)
        stages = run_tiny_graph(root, [*ONE_RUNG, "model.dtype=bfloat16", "model.device=cuda"], wandb_mode="disabled")
    finally:
        mp.undo()
    return root, stages, seam


def test_every_stage_loads_in_the_configured_dtype_and_device(bf16_graph):
    _, stages, seam = bf16_graph
    assert seam.problems(torch.bfloat16, "cuda:0") == []
    assert LOADING_STAGES <= set(stages)
    assert {s for s, *_ in seam.placed} == LOADING_STAGES  # every stage that loads a model was seen loading
    # checkpoints load straight onto the GPU (router's hidden-state encoder is loaded, then placed)
    assert {s for s, _, kw in seam.built if kw.get("device_map") == "cuda:0"} == LOADING_STAGES - {"router"}


def test_bf16_base_stays_bf16_in_every_rung(bf16_graph):
    from pipeline.models.loading import stored_dtypes

    root, _, _ = bf16_graph
    art = root / "artifacts"
    for rung in ("../base", "dense", "mixed"):
        assert set(stored_dtypes(art / "ladder" / rung)) == {"bfloat16"}, rung
    assert json.loads((art / "base" / "provenance.json").read_text())["dtype"] == "bfloat16"


def test_bf16_graph_writes_every_output(bf16_graph):
    root, _, _ = bf16_graph
    art = root / "artifacts"
    for rung in ("dense", "mixed"):
        m = json.loads((art / "eval" / rung / "metrics.json").read_text())
        assert m["scoring"]["items"] > 0 and m["perplexity"]["perplexity"] > 1
        assert m["cost"]["peak_memory_kind"] == "rss" and m["cost"]["peak_memory_mb"] > 0
    assert (art / "router" / "router.json").is_file() and (art / "cascade" / "thresholds.json").is_file()
    manifest = yaml.safe_load((art / "manifest.yaml").read_text())
    assert {r["name"] for r in manifest["rungs"]} == {"dense", "mixed"}


def test_serve_loads_rungs_as_stored(bf16_graph, monkeypatch):
    from pipeline.deploy.runtime import LadderRuntime

    root, _, _ = bf16_graph
    seam = Seam(monkeypatch)
    rt = LadderRuntime(root / "artifacts" / "manifest.yaml", device="cpu")
    rt.score("mixed", "Question: Is the sky blue?\nAnswer:", [" yes", " no"])
    assert seam.problems(torch.bfloat16, "cpu") == [] and len(seam.placed) == 1


def test_the_seam_catches_a_forced_float32_or_cpu_load(tiny_base, monkeypatch):
    """What the graph test relies on: a load that bypasses the config is reported."""
    from transformers import AutoModelForCausalLM

    from pipeline.common.config import validate
    from pipeline.models.loading import load_causal_lm

    cfg = validate(tiny_config(["model.dtype=bfloat16", "model.device=cpu"]))
    seam = Seam(monkeypatch)
    load_causal_lm(tiny_base, cfg.model)
    assert seam.problems(torch.bfloat16, "cpu") == []
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, use_safetensors=True)  # a stage forcing fp32
    found = seam.problems(torch.bfloat16, "cpu")
    assert any("torch.float32, config asks torch.bfloat16" in p for p in found), found
    assert any("without going through loading.place" in p for p in found), found


def test_cuda_request_reaches_transformers_and_placement(tiny_base, monkeypatch):
    from pipeline.common.config import validate
    from pipeline.models.loading import load_causal_lm

    fake_gpu(monkeypatch)
    seam = Seam(monkeypatch, move=False)
    cfg = validate(tiny_config(["model.dtype=float16", "model.device=cuda:0"]))
    load_causal_lm(tiny_base, cfg.model)
    assert seam.problems(torch.float16, "cuda:0") == []
    assert seam.built[0][2]["device_map"] == "cuda:0"
    assert seam.problems(torch.float16, "cpu") != []  # a CPU placement would be caught


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_fails_at_stage_start(tmp_path, capsys, device):
    from pipeline import calibrate

    params = write_params(tmp_path / "params.yaml", tiny_config([f"model.device={device}"]))
    t = time.perf_counter()
    with pytest.raises(SystemExit) as exc:  # no base or data exists: it fails before looking for them
        calibrate.main(["--params", str(params), "--base", str(tmp_path / "nope"), "--data", str(tmp_path / "nope"),
                        "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and time.perf_counter() - t < 10
    err = capsys.readouterr().err
    assert f"calibrate: model.device={device}: torch sees no CUDA device" in err and "available: cpu" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_gpu_index_is_named(monkeypatch):
    from pipeline.common.device import DeviceError, resolve_device

    fake_gpu(monkeypatch)
    assert str(resolve_device("cuda")) == "cuda:0" and str(resolve_device("auto")) == "cuda"
    with pytest.raises(DeviceError, match=r"model.device=cuda:3: this machine has 1 CUDA device\(s\); "
                                          r"available: cpu, cuda:0"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("key,value,says", [
    ("model.device", "gpu", "model.device: got 'gpu'; allowed: auto, cpu, cuda, cuda:N"),
    ("model.dtype", "float64", "model.dtype: got 'float64'; allowed:"),
])
def test_bad_device_or_dtype_is_refused_by_the_schema(key, value, says):
    from pipeline.common.config import ConfigError, validate

    with pytest.raises(ConfigError) as exc:
        validate(tiny_config([f"{key}={value}"]))
    assert says in str(exc.value)


def test_peak_memory_is_in_the_done_line(tiny_base, caplog):
    from pipeline.common.device import peak_memory

    mb, kind = peak_memory()
    assert kind == ("cuda" if torch.cuda.is_available() and torch.cuda.is_initialized() else "rss") and mb > 0
    import logging

    from pipeline.common.stage import Stage

    caplog.set_level(logging.INFO, logger="ladder")
    Stage("x", None, None).done(read="a", wrote="b")
    assert "peak memory" in caplog.text and " MB rss" in caplog.text


def test_stored_dtype_reads_every_shard(tmp_path):
    from safetensors.torch import save_file

    from pipeline.models.loading import stored_dtype, stored_dtypes

    save_file({"a": torch.zeros(2, dtype=torch.bfloat16)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(2, dtype=torch.bfloat16), "c": torch.zeros(1)},
              str(tmp_path / "model-00002-of-00002.safetensors"))
    assert stored_dtypes(tmp_path) == {"bfloat16": 2, "float32": 1}
    assert stored_dtype(tmp_path) == "mixed (bfloat16: 2, float32: 1)"
    Path(tmp_path / "model-00002-of-00002.safetensors").unlink()
    assert stored_dtype(tmp_path) == "bfloat16"
