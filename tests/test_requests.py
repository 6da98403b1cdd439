"""Bounded requests: the runtime's request parser and token limits, and a fuzz run against both."""

from __future__ import annotations

import json
import random
import time

import pytest

from pipeline.common.config import ConfigError, ServeConfig, validate
from pipeline.deploy.requests import Request, RequestError, check_request, encode_request, parse_request
from tests.conftest import tiny_config

LIMITS = ServeConfig()
SMALL = ServeConfig(max_request_bytes=4096, max_choices=4, max_choice_tokens=8, max_context_tokens=16,
                    max_request_tokens=32)


@pytest.fixture(scope="module")
def tok(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def test_a_good_request_parses():
    req = parse_request(json.dumps({"context": "Question: 2+2?\nAnswer:", "choices": [" 4", " 5"]}), LIMITS)
    assert req == Request("Question: 2+2?\nAnswer:", (" 4", " 5"))
    assert parse_request(b'{"context": "Q", "choices": [" a", " b"]}', LIMITS).choices == (" a", " b")


@pytest.mark.parametrize("context,choices,message", [
    ("Q", [" a", ""], r"choice 1 is empty"),
    ("Q", [" a", "   "], r"choice 1 is empty \(only whitespace\)"),
    ("", [" a", " b"], r"context is empty"),
    ("Q", [" a"], r"at least 2 choices, got 1"),
    ("Q", " ab", r"choices must be a list of strings, got str"),
    ("Q", [" a", 3], r"choice 1 must be a string, got int"),
    (None, [" a", " b"], r"context must be a string"),
    ("Q", [f" {i}" for i in range(17)], r"17 choices; the limit is serve.max_choices=16"),
    ("Q\udcff", [" a", " b"], r"context is not valid UTF-8 \(byte 0xff at character 1\)"),  # argv surrogateescape
    ("Q", [" a", " b\ud800"], r"choice 1 is not valid Unicode text \(lone surrogate U\+D800"),
    ("Q" * 70_000, [" a", " b"], r"limit is serve.max_request_bytes=65536"),
    ("Q", [" a", "é" * 40_000], r"80003 bytes of UTF-8; the limit is serve.max_request_bytes=65536"),
])
def test_bad_text_is_refused_naming_the_field(context, choices, message):
    with pytest.raises(RequestError, match=message):
        check_request(context, choices, LIMITS)


@pytest.mark.parametrize("raw,message", [
    (b"\xff\xfe{}", r"not valid UTF-8 \(byte 0xff at offset 0\)"),
    (b'{"context": "Q", "choices": [" a", " b"]', r"not valid JSON"),
    (b"[" * 50_000, r"nested too deep|not valid JSON"),
    (b'[" a", " b"]', r"a request is a JSON object"),
    (b'{"context": "Q"}', r"missing \['choices'\]"),
    (b'{"context": "Q", "choices": [" a", " b"], "gold": 1}', r"unknown \['gold'\]"),
    (b" " * (12 * 65_536 + 2_000), r"the limit is serve.max_request_bytes"),
])
def test_bad_json_is_refused(raw, message):
    with pytest.raises(RequestError, match=message):
        parse_request(raw, LIMITS)


def test_token_limits_refuse_long_choices_and_cut_long_contexts(tok):
    ok = encode_request(tok, check_request("Question: is it?\nAnswer:", [" yes", " no"], SMALL), SMALL, 2048)
    assert ok.context_tokens_cut == 0 and ok.context and all(ok.continuations)
    # A choice over max_choice_tokens is refused, never cut.
    with pytest.raises(RequestError, match=r"choice 1 is \d+ tokens; the limit is serve.max_choice_tokens=8"):
        encode_request(tok, check_request("Q:", [" yes", " one two three four five six seven eight nine"], SMALL),
                       SMALL, 2048)
    # A long context is cut from the left to what the limits leave, and the cut is reported.
    long_ctx = " ".join(f"w{i}" for i in range(200)) + "\nAnswer:"
    enc = encode_request(tok, check_request(long_ctx, [" yes", " no"], SMALL), SMALL, 2048)
    assert len(enc.context) == SMALL.max_context_tokens and enc.context_tokens_cut > 0
    full = tok(long_ctx, add_special_tokens=False)["input_ids"]
    assert enc.context == full[-SMALL.max_context_tokens:]  # the end is kept, as lm-eval truncates
    # Choices that leave less room than max_context_tokens shrink the context further.
    four = [" one two three", " four five six", " seven eight", " nine ten"]
    enc = encode_request(tok, check_request(long_ctx, four, SMALL), SMALL, 2048)
    assert len(enc.context) + sum(map(len, enc.continuations)) <= SMALL.max_request_tokens
    # ... and the model's positions bound it too.
    enc = encode_request(tok, check_request(long_ctx, [" yes", " no"], SMALL), SMALL, 10)
    assert len(enc.context) + max(map(len, enc.continuations)) <= 10
    refuse = SMALL.model_copy(update={"context_overflow": "refuse"})
    with pytest.raises(RequestError, match=r"serve.context_overflow=refuse"):
        encode_request(tok, check_request(long_ctx, [" yes", " no"], refuse), refuse, 2048)


def test_limits_are_config(tiny_raw):
    tiny_raw["serve"]["max_choices"] = 1
    with pytest.raises(ConfigError, match=r"serve.max_choices: Input should be greater than or equal to 2"):
        validate(tiny_raw)
    raw = tiny_config(["serve.max_request_tokens=100", "serve.max_choice_tokens=60"])
    with pytest.raises(ConfigError, match=r"serve: max_request_tokens \(100\) must exceed two choices"):
        validate(raw)
    assert validate(tiny_config(["serve.context_overflow=refuse"])).serve.context_overflow == "refuse"


def _fuzz_cases(rng: random.Random, n: int):
    """Random bytes, near-JSON, and well-formed requests with hostile sizes and contents."""
    alphabet = ["a", " ", "é", "\u4e00", "\U0001F600", "\x00", "\n", "\ud800", "\udcff", "\\", '"']
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2048)))
        elif kind == 1:
            size = rng.choice([10, 1_000, 100_000, 1_000_000, 5_000_000])
            yield json.dumps({"context": "Q" * rng.randint(0, size),
                              "choices": ["x" * rng.randint(0, size) for _ in range(rng.randint(0, 3))]})
        elif kind == 2:
            chars = alphabet if rng.random() < 0.3 else [c for c in alphabet if not 0xD800 <= ord(c) <= 0xDFFF]
            text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 300)))
            yield json.dumps({"context": text, "choices": [text[::-1], text + "?"]}, ensure_ascii=rng.random() < 0.5)
        elif kind == 3:
            yield json.dumps({"context": "Q", "choices": [" c"] * rng.choice([0, 1, 2, 16, 17, 10_000, 200_000])})
        elif kind == 4:
            depth = rng.choice([10, 1_000, 100_000])
            yield ("[" * depth + "]" * depth).encode()
        else:
            good = json.dumps({"context": "Question: what?\nAnswer:", "choices": [" yes", " no"]}).encode()
            cut = rng.randint(0, len(good))
            yield good[:cut] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 8))) + good[cut:]


def test_fuzz_parser_and_tokenisation_are_bounded(tok):
    """Every input ends in a Request or a RequestError, never anything else, and quickly."""
    rng = random.Random(12)
    worst, accepted, refused = 0.0, 0, 0
    for raw in _fuzz_cases(rng, 300):
        t0 = time.perf_counter()
        try:
            req = parse_request(raw, LIMITS)
            encode_request(tok, req, LIMITS, 2048)
            accepted += 1
        except RequestError:
            refused += 1
        took = time.perf_counter() - t0
        worst = max(worst, took)
        assert took < 2.0, (took, raw[:80])
    # The largest request the limits allow: every choice re-tokenises the context (as lm-eval does).
    big = Request("w " * 16_000, tuple(f" {i}" for i in range(16)))
    t0 = time.perf_counter()
    enc = encode_request(tok, big, LIMITS, 2048)
    assert time.perf_counter() - t0 < 5.0 and len(enc.context) <= LIMITS.max_context_tokens
    assert accepted > 20 and refused > 100, (accepted, refused)
