"""A query as the runtime accepts it: checked, then tokenised within the limits (`serve.*` config).

Two steps, both bounded whatever the input:
1. `parse_request` (raw JSON bytes or text) and `check_request` (a context, choices and an
   optional task name) check the text itself before any tokenizer sees it: valid UTF-8, a
   non-empty context, 2 to `max_choices` non-empty choices, at most `max_request_bytes` of UTF-8
   in all, a task name of at most `MAX_TASK_CHARS` characters. Work is linear in the input, which
   is itself capped.
2. `encode_request` tokenises as the evaluation does (`pipeline.evaluation.scoring.encode_pair`)
   and applies the token limits: a choice over `max_choice_tokens` is refused (cutting it would
   change what is scored); the context is cut from the left (as lm-evaluation-harness does) to
   the tokens left by `max_context_tokens`, by `max_request_tokens` minus the choices, and by the
   model's positions, or refused when `context_overflow: refuse`. The scored sequence therefore
   never exceeds `max_request_tokens`.
Every refusal is a `RequestError` naming the field and the limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.common.config import ServeConfig

REQUEST_KEYS = ("context", "choices")
OPTIONAL_KEYS = ("task",)  # the query's task (e.g. arc_easy): an input of the router and the deferral rule
MAX_TASK_CHARS = 200


class RequestError(ValueError):
    """A request the runtime will not answer; the message says which field and which limit."""


@dataclass(frozen=True)
class Request:
    context: str
    choices: tuple[str, ...]
    task: str | None = None  # unknown or None: the router and deferral use their task-free estimate


def _utf8_problem(text: str) -> str | None:
    """Why `text` is not valid UTF-8 text. Command-line bytes that are not UTF-8 arrive as lone
    surrogates (Python's surrogateescape), which give back the offending byte."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        ch = ord(text[exc.start])
        if 0xDC80 <= ch <= 0xDCFF:
            return f"is not valid UTF-8 (byte {ch - 0xDC00:#04x} at character {exc.start})"
        return f"is not valid Unicode text (lone surrogate U+{ch:04X} at character {exc.start})"


def check_task(task: Any) -> str | None:
    """A task name as the router and the deferral rule take it: None, or a short string."""
    if task is None:
        return None
    if not isinstance(task, str):
        raise RequestError(f"task must be a string (a task name such as arc_easy), got {type(task).__name__}")
    if len(task) > MAX_TASK_CHARS:
        raise RequestError(f"task is {len(task)} characters; a task name has at most {MAX_TASK_CHARS}")
    problem = _utf8_problem(task)
    if problem:
        raise RequestError(f"task {problem}")
    return task


def check_request(context: Any, choices: Any, limits: ServeConfig, task: Any = None) -> Request:
    """Check a query's text against the limits; return it as a Request or raise RequestError."""
    task = check_task(task)
    if not isinstance(context, str):
        raise RequestError(f"context must be a string, got {type(context).__name__}")
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)):
        raise RequestError(f"choices must be a list of strings, got {type(choices).__name__}")
    if len(choices) < 2:
        raise RequestError(f"a multiple-choice query needs at least 2 choices, got {len(choices)}")
    if len(choices) > limits.max_choices:
        raise RequestError(f"{len(choices)} choices; the limit is serve.max_choices={limits.max_choices}")
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise RequestError(f"choice {i} must be a string, got {type(c).__name__}")
    # Sizes before anything walks the text: a character is at most 4 UTF-8 bytes.
    chars = len(context) + sum(len(c) for c in choices)
    if chars > limits.max_request_bytes:
        raise RequestError(f"the request holds {chars} characters; the limit is serve.max_request_bytes="
                           f"{limits.max_request_bytes} bytes of UTF-8")
    for name, text in [("context", context), *((f"choice {i}", c) for i, c in enumerate(choices))]:
        problem = _utf8_problem(text)
        if problem:
            raise RequestError(f"{name} {problem}")
    size = len(context.encode("utf-8")) + sum(len(c.encode("utf-8")) for c in choices)
    if size > limits.max_request_bytes:
        raise RequestError(f"the request is {size} bytes of UTF-8; the limit is serve.max_request_bytes="
                           f"{limits.max_request_bytes}")
    if not context.strip():
        raise RequestError("context is empty: the choices would be scored with nothing to condition on")
    for i, c in enumerate(choices):
        if not c.strip():
            raise RequestError(f"choice {i} is empty{' (only whitespace)' if c else ''}: there is nothing to score")
    return Request(context, tuple(choices), task)


def parse_request(raw: bytes | str, limits: ServeConfig) -> Request:
    """A request from JSON text: {"context": str, "choices": [str, ...], "task": str (optional)}."""
    if isinstance(raw, str):
        problem = _utf8_problem(raw)
        if problem:
            raise RequestError(f"the request {problem}")
        raw = raw.encode("utf-8")
    if not isinstance(raw, (bytes, bytearray)):
        raise RequestError(f"a request is JSON text, got {type(raw).__name__}")
    # JSON escapes can spell one character in up to 12 bytes; anything longer than that is over any limit.
    if len(raw) > 12 * limits.max_request_bytes + 1024:
        raise RequestError(f"the request is {len(raw)} bytes; the limit is serve.max_request_bytes="
                           f"{limits.max_request_bytes} bytes of text")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request is not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request is not valid JSON ({exc.msg} at offset {exc.pos})") from None
    except RecursionError:
        raise RequestError("the request is not valid JSON for a query (nested too deep)") from None
    if not isinstance(obj, dict):
        raise RequestError(f"a request is a JSON object with keys {list(REQUEST_KEYS)}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(REQUEST_KEYS) - set(OPTIONAL_KEYS))
    missing = [k for k in REQUEST_KEYS if k not in obj]
    if unknown or missing:
        raise RequestError(f"a request has the keys {list(REQUEST_KEYS)} and optionally {list(OPTIONAL_KEYS)}"
                           + (f"; missing {missing}" if missing else "")
                           + (f"; unknown {[k[:40] for k in unknown[:5]]}" if unknown else ""))
    return check_request(obj["context"], obj["choices"], limits, obj.get("task"))


@dataclass(frozen=True)
class EncodedRequest:
    context: list[int]
    continuations: list[list[int]]
    context_tokens_cut: int  # tokens removed from the left of the context (0: none)


def encode_request(tok, req: Request, limits: ServeConfig, max_positions: int) -> EncodedRequest:
    """Tokenise like the evaluation and apply the token limits; raise RequestError over a limit."""
    from pipeline.evaluation.scoring import encode_pair

    pairs = [encode_pair(tok, req.context, c) for c in req.choices]
    ctx = pairs[0][0]  # the context's own encoding: the same for every choice
    conts = [p[1] for p in pairs]
    if not ctx:
        raise RequestError("context has no tokens once its trailing whitespace goes to the choices")
    for i, c in enumerate(conts):
        if not c:
            raise RequestError(f"choice {i} has no tokens")
        if len(c) > limits.max_choice_tokens:
            raise RequestError(f"choice {i} is {len(c)} tokens; the limit is serve.max_choice_tokens="
                               f"{limits.max_choice_tokens} (a choice is never cut: that would change the answer)")
    choice_tokens = sum(len(c) for c in conts)
    room = min(limits.max_context_tokens, limits.max_request_tokens - choice_tokens,
               max_positions - max(len(c) for c in conts))
    if room < 1:
        raise RequestError(f"the choices take {choice_tokens} tokens of the serve.max_request_tokens="
                           f"{limits.max_request_tokens} per request, leaving no room for the context")
    cut = max(0, len(ctx) - room)
    if cut and limits.context_overflow == "refuse":
        raise RequestError(f"context is {len(ctx)} tokens; this request has room for {room} (serve.max_context_tokens="
                           f"{limits.max_context_tokens}, serve.max_request_tokens={limits.max_request_tokens}) and "
                           "serve.context_overflow=refuse")
    return EncodedRequest(ctx[cut:], conts, cut)
