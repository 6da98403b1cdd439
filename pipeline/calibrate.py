"""Stage `calibrate`: importance at every granularity from one hooked pass.

Reads the base checkpoint and the calibration blocks; writes `--out`
(default artifacts/calibrate/):
- `importance.safetensors`: block_influence, angular_distance [L], head [L,H],
  kv_group [L,KV], mlp_channel [L,I], hidden_channel [D], and the statistics later steps
  reuse: mean squares at every norm input [2L+1, D] and every linear input (OWL);
- `summary.json`: per-layer scores, the ranking used to drop layers, seconds (and, with
  `--time-reference`, a plain forward pass over the same tokens for the hooks' overhead);
- `importance.png`: layers x granularity.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--base", default="artifacts/base")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--out", default="artifacts/calibrate")
    ap.add_argument("--time-reference", action="store_true",
                    help="also time a plain forward pass over the same tokens (the hooks' overhead)")


def _picture(imp, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(15, 5), gridspec_kw={"width_ratios": [1.2, 1, 1, 2]})
    L = len(imp.block_influence)
    ax[0].barh(range(L), imp.block_influence.numpy(), label="block influence")
    ax[0].barh(range(L), imp.angular_distance.numpy(), alpha=0.5, label="angular distance")
    ax[0].set_title("layer: how much it turns the residual")
    ax[0].legend(fontsize=7)
    ax[1].imshow(imp.head.numpy(), aspect="auto", cmap="viridis")
    ax[1].set_title("attention head (rms contribution)")
    hc = imp.hidden_channel.sort(descending=True).values
    ax[2].plot(hc.numpy(), range(len(hc)), color="tab:red")
    ax[2].set_title("hidden channels, sorted (rms at norm outputs)")
    ax[2].set_xlabel("importance")
    ch = imp.mlp_channel.sort(dim=1, descending=True).values
    ax[3].imshow(ch.clamp_min(1e-6).log10().numpy(), aspect="auto", cmap="magma")
    ax[3].set_title("MLP channels, sorted (log10 rms contribution)")
    ax[3].set_xlabel("channel rank")
    ax[1].set_xlabel("query head")
    for a in (ax[0], ax[1], ax[3]):
        a.set_ylabel("layer")
    ax[2].set_ylabel("channel rank")
    for a in (ax[0],):  # bars count up by default; match the images (layer 0 on top)
        a.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    st = begin("calibrate", _args, argv)

    from safetensors.torch import load_file, save_file

    from pipeline.common.atomic import atomic_dir
    from pipeline.common.timings import timings_path, write_timings
    from pipeline.models.loading import load_causal_lm
    from pipeline.pruning.importance import measure_importance, plain_forward

    args = st.args
    with st.tracked() as tracker:
        model = load_causal_lm(args.base, st.cfg.model)
        blocks = load_file(str(Path(args.data) / "calibration.safetensors"))["input_ids"]
        tokens = blocks.numel()

        t = time.perf_counter()
        imp = measure_importance(model, blocks)
        hooked = time.perf_counter() - t
        plain = None
        if args.time_reference:
            t = time.perf_counter()
            plain_forward(model, blocks, desc="plain forward (timing reference)")
            plain = time.perf_counter() - t

        order = imp.block_influence.argsort().tolist()
        summary = {
            "tokens": tokens,
            "layers": [
                {"layer": i, "block_influence": float(imp.block_influence[i]),
                 "angular_distance": float(imp.angular_distance[i]),
                 "head_importance": [round(float(x), 5) for x in imp.head[i]],
                 "mlp_channel_importance_mean": float(imp.mlp_channel[i].mean())}
                for i in range(len(order))
            ],
            "layer_drop_order_block_influence": order,
            "hidden_channel_importance": {"top10": imp.hidden_channel.argsort(descending=True)[:10].tolist()},
        }
        with atomic_dir(Path(args.out)) as tmp:
            save_file(imp.tensors(), str(tmp / "importance.safetensors"))
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            _picture(imp, tmp / "importance.png")
        # Seconds stay out of artifacts/calibrate: a rerun with the same result then changes nothing downstream.
        write_timings(timings_path(Path(args.out).parent, "calibrate"),
                      {"hooked_pass": round(hooked, 2), "plain_forward": plain and round(plain, 2),
                       "overhead_x": plain and round(hooked / plain, 2),
                       "tokens_per_second_hooked": round(tokens / hooked, 1)})
        tracker.summary({"calibrate/tokens": tokens, "calibrate/seconds": round(hooked, 2)})
    st.done(
        read=f"{args.base}, {tokens} calibration tokens",
        wrote=f"{args.out}/ (importance.safetensors, summary.json, importance.png); hooked pass {hooked:.1f}s"
        + (f" vs plain forward {plain:.1f}s" if plain else ""),
    )


if __name__ == "__main__":
    main()
