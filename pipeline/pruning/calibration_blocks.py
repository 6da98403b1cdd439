"""Which calibration blocks the allocator scores candidate cuts on, and which the fits read."""

from __future__ import annotations

import torch


def split_blocks(calib: torch.Tensor, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(scoring, fitting): the calibration blocks candidate cuts are scored on, and those the
    least-squares refits and weight pruning read (`ladder.allocator.eval_on`).

    `held_out` reserves the last `eval_blocks` for scoring and fits on the blocks before them:
    scoring on blocks a refit read would reward it for fitting its own samples, which favours
    refitted width cuts over whole layers. `first` scores on the first blocks and fits on all.
    `calibrate`'s importance scores read every block, but they only rank units."""
    if cfg.eval_on == "held_out":
        if cfg.eval_blocks >= len(calib):
            raise ValueError(f"ladder.allocator.eval_blocks={cfg.eval_blocks} leaves no calibration block to fit "
                             f"on ({len(calib)} in all); lower it or raise data.calibration.num_blocks")
        return calib[-cfg.eval_blocks:], calib[: -cfg.eval_blocks]
    return calib[: cfg.eval_blocks], calib
