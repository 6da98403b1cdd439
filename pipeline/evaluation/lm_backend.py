"""The project's shared-context scorer as an lm-evaluation-harness model backend.

`SharedContextLM(model, tokenizer)` is an `lm_eval.api.model.LM`: pass it to
`lm_eval.simple_evaluate(model=..., tasks=[...])` and every `loglikelihood`
request is scored by `pipeline.evaluation.scoring.score_choices`. Requests
that share a context (the choices of one multiple-choice question) become one
packed sequence, so the context is encoded once for all of its choices, as
the evaluation stage does. Tokenisation is lm-eval's `_encode_pair` split; an
empty context is conditioned on the EOS token, like lm-eval's HF backend.

Generation and rolling log-likelihood are not implemented: the pipeline scores
multiple-choice tasks only (perplexity has its own code in `scoring.py`).
"""

from __future__ import annotations

from lm_eval.api.model import LM

from pipeline.evaluation.scoring import Encoded, encode_item, score_choices


class SharedContextLM(LM):
    def __init__(self, model, tokenizer, batch_tokens: int = 4096, max_length: int | None = None,
                 progress: bool = True) -> None:
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.max_length = max_length or min(getattr(model.config, "max_position_embeddings", 2048), 4096)
        self.progress = progress

    def _encode(self, context: str, continuations: list[str]) -> Encoded:
        if context:
            return encode_item(self.tokenizer, context, continuations, self.max_length)
        conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        return Encoded([self.tokenizer.eos_token_id], conts)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [r.args for r in requests]
        groups: dict[str, list[int]] = {}
        for i, (context, _) in enumerate(args):
            groups.setdefault(context, []).append(i)
        encoded = [self._encode(ctx, [args[i][1] for i in idxs]) for ctx, idxs in groups.items()]
        scored = score_choices(self.model, encoded, self.batch_tokens, desc="shared-context loglikelihood",
                               progress=self.progress and not disable_tqdm)
        out: list[tuple[float, bool] | None] = [None] * len(args)
        for idxs, s in zip(groups.values(), scored):
            for k, i in enumerate(idxs):
                out[i] = (s["loglik"][k], s["greedy"][k])
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("SharedContextLM scores multiple-choice requests only (loglikelihood)")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError("SharedContextLM scores multiple-choice requests only (loglikelihood)")
