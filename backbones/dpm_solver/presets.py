"""Presets of the DPM-Solver backbone: run-config overrides (``full`` = the paper, SPEC 4)."""

from __future__ import annotations

from typing import Any

#: score_sde DDPM++ deep continuous (configs/vp/cifar10_ddpmpp_deep_continuous), GroupNorm as the multistage code
NETWORK = {
    "channel_mult": [1, 2, 2, 2], "num_blocks": 8, "attn_resolutions": [16], "dropout": 0.1,
    "resample_filter": [1, 3, 3, 1], "progressive_input": "residual", "middle": "encoder", "augment_dim": 0,
    "norm_groups": 16,
}
#: DPM-Solver singlestep, order 3, 20 NFE, logSNR spacing, t from 1 to 1e-4 (SPEC 4)
SAMPLER = {"order": 3, "nfe": 20, "spacing": "logsnr", "t_start": None, "t_end": 1e-4}
STAGES = {"num_stages": 3, "boundaries": [0.4420, 0.6308], "boundaries_schedule": "vp_linear"}
SCHEDULE = {"name": "vp_linear", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-5}

FULL: dict[str, Any] = {
    "schedule": SCHEDULE,
    "dataset": {"name": "cifar10", "resolution": 32, "hflip": True},
    "model": {"encoder_channels": 128, "decoder_channels": [192, 128, 16], "params": NETWORK},
    "stages": STAGES,
    "train": {"steps": 450_000, "batch_size": 128, "optimizer": "adam", "lr": 2e-4, "weight_decay": 0.0,
              "warmup_steps": 5000, "grad_clip": 1.0, "ema_decay": 0.9999, "ema_halflife_kimg": None,
              "stage_policy": "stage_uniform", "augment_p": 0.0, "checkpoint_every": 10_000, "log_every": 100},
    "sample": {"sampler": "dpm_solver", "params": SAMPLER, "num": 50_000, "batch_size": 500},
    "eval": {"metrics": ["fid"], "num_samples": 50_000},
}

#: digits at their native 8 px; 2 levels, 1 residual block per level, attention at 4 px, no dropout. The encoder is
#: 64 wide so the 0.125x decoder keeps 8 channels (decoders 1.5 / 1 / 0.125 x the encoder, as the paper's);
#: channel_mult [1, 1] keeps the 4 px level at the same width (cost); GroupNorm 8 groups so that every width, skip
#: concatenations included (8 + 64 = 72), splits evenly. One recipe for every tiny cell.
#: Stage policy ``per_sample`` (uniform over stages: the same noise marginal as the official ``stage_uniform``), not
#: one stage per batch: at 800 iterations, one stage per batch leaves each decoder about 267 updates and multistage
#: scored FD-digits 585 against 156 with mixed batches (same recipe and cut points otherwise, 3 x 297 samples; issue
#: 10). Mixed batches cost about 1.4x per step on CPU (decoders run on sub-batches; bench/training.py).
TINY_TRAIN: dict[str, Any] = {
    "steps": 800, "batch_size": 64, "optimizer": "adam", "lr": 2e-3, "warmup_steps": 50, "grad_clip": 1.0,
    "ema_decay": 0.995, "ema_halflife_kimg": None, "stage_policy": "per_sample", "augment_p": 0.0,
    "checkpoint_every": 200, "keep_checkpoints": 1, "log_every": 50, "heldout_size": 128, "heldout_every": 40}

TINY: dict[str, Any] = {
    "schedule": SCHEDULE,
    "dataset": {"name": "digits", "resolution": 8, "hflip": False},
    "model": {"encoder_channels": 64, "decoder_channels": [96, 64, 8],
              "params": {**NETWORK, "channel_mult": [1, 1], "num_blocks": 1, "attn_resolutions": [4],
                         "dropout": 0.0, "norm_groups": 8}},
    "stages": STAGES,
    "train": TINY_TRAIN,
    "sample": {"sampler": "dpm_solver", "params": SAMPLER, "num": 297, "batch_size": 297},
    "eval": {"metrics": ["fd_digits"], "num_samples": 297, "repeats": 3},
}

SMOKE: dict[str, Any] = {
    **TINY,
    "model": {"encoder_channels": 16, "decoder_channels": [24, 16, 8],
              "params": {**NETWORK, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}},
    "train": {**TINY["train"], "steps": 20, "batch_size": 16, "warmup_steps": 0, "checkpoint_every": 10,
              "keep_checkpoints": 2, "log_every": 5, "heldout_size": 32, "heldout_every": None},
    "sample": {"sampler": "dpm_solver", "params": {**SAMPLER, "nfe": 10}, "num": 16, "batch_size": 16},
    "eval": {"metrics": ["fd_digits"], "num_samples": 64},
}

PRESETS: dict[str, dict[str, Any]] = {"full": FULL, "tiny": TINY, "smoke": SMOKE}
