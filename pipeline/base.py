"""Stage `base`: resolve the model source into a plain Hugging Face checkpoint.

Reads `model.*` from params.yaml; writes `--out` (default artifacts/base/):
safetensors weights, config, tokenizer, and `provenance.json` (source, package
version, sha256 of the source file and of every written weight file, and a
greedy completion of the smoke prompt from the *reloaded* checkpoint, so a
broken save is caught here and not three stages later).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--out", default="artifacts/base")


def main(argv: list[str] | None = None) -> None:
    st = begin("base", _args, argv)
    cfg = st.cfg
    _check_architecture(cfg.model.source)

    import torch
    import transformers
    from transformers import AutoTokenizer

    from pipeline.common.assets import sha256_file
    from pipeline.common.atomic import atomic_dir
    from pipeline.models.checkpoint import save_tokenizer
    from pipeline.models.loading import load_causal_lm, stored_dtype
    from pipeline.models.source import load_base

    with st.tracked() as tracker:
        model, tok, source = load_base(cfg.model, cfg.seed)
        _check_architecture(model.config)  # what was loaded, for sources the preflight could not read
        out = Path(st.args.out)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=cfg.model.max_shard_size)
            # Cleanup mangles BPE spacing (transformers warns on every load otherwise).
            tok.clean_up_tokenization_spaces = False
            save_tokenizer(tok, tmp)
            del model  # the smoke test below must use what was written, not what is in memory

            reloaded = load_causal_lm(tmp, cfg.model)
            rtok = AutoTokenizer.from_pretrained(tmp)
            ids = rtok(cfg.model.smoke_prompt, return_tensors="pt").to(reloaded.device)
            with torch.no_grad():
                gen = reloaded.generate(
                    **ids, max_new_tokens=cfg.model.smoke_tokens, do_sample=False,
                    pad_token_id=rtok.pad_token_id,
                )
            completion = rtok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

            c = reloaded.config
            provenance = {
                "name": cfg.model.name,
                "source": source,
                # Carried into every rung's model card (pipeline/models/card.py).
                "license": cfg.model.license,
                "base_model": cfg.model.base_model or (source.get("repo_id") if source["kind"] == "hub" else None),
                # every weights file, and the shard index when the weights are sharded
                "weights": {p.name: sha256_file(p) for p in sorted([*tmp.glob("*.safetensors"),
                                                                    *tmp.glob("*.safetensors.index.json")])},
                "architecture": {
                    "model_type": c.model_type,
                    "num_hidden_layers": c.num_hidden_layers,
                    "hidden_size": c.hidden_size,
                    "num_attention_heads": c.num_attention_heads,
                    "num_key_value_heads": c.num_key_value_heads,
                    "head_dim": getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
                    "intermediate_size": c.intermediate_size,
                    "vocab_size": c.vocab_size,
                    "tie_word_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
                },
                "num_parameters": sum(p.numel() for p in reloaded.parameters()),
                # What the written safetensors really hold (their headers), not what was asked for.
                "dtype": stored_dtype(tmp),
                "seed": cfg.seed,
                "smoke": {"prompt": cfg.model.smoke_prompt, "completion": completion},
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                },
            }
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")

        tracker.summary({
            "num_parameters": provenance["num_parameters"],
            "num_hidden_layers": c.num_hidden_layers,
            "smoke_completion": completion,
        })
    src = source.get("file") or source.get("path") or source.get("repo_id") or source["kind"]
    st.done(
        read=f"{source['kind']} model {src} ({provenance['num_parameters'] / 1e6:.1f}M params)",
        wrote=f"{out}/ (safetensors, tokenizer, provenance.json); smoke: "
        f"{cfg.model.smoke_prompt!r} -> {completion.strip()[:60]!r}",
    )


def _check_architecture(source_or_config) -> None:
    """Refuse an unsupported model before loading it (from what the source declares), naming the
    supported ones; called again on the loaded config for sources that declare nothing cheaply."""
    from pipeline.models.architecture import UnsupportedArchitecture, check_supported

    if hasattr(source_or_config, "kind"):
        from pipeline.models.preflight import declared_model_type

        model_type, where = declared_model_type(source_or_config)
        if model_type is None:
            return
    else:
        model_type, where = source_or_config.model_type, "the loaded model's config"
    try:
        check_supported(model_type, where)
    except UnsupportedArchitecture as exc:
        raise SystemExit(f"base: {exc}") from None


if __name__ == "__main__":
    main()
