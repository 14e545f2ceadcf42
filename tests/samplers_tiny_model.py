"""A test-only backbone (a few convolutions) and a checkpoint made from it, for the sampling engine and CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from msrepro.backbones.base import Backbone
from msrepro.checkpoint import save_checkpoint
from msrepro.config import to_dict
from msrepro.runconfig import load_config
from msrepro.models import build_denoiser
from msrepro.multidecoder import EncoderOutput
from msrepro.registry import BACKBONES

NAME = "samplers_test_tiny"


class TinyEncoder(nn.Module):
    def __init__(self, channels: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.emb = nn.Linear(1, channels)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **cond) -> EncoderOutput:
        emb = self.emb(c_noise.reshape(-1, 1).to(x.dtype))
        h = torch.tanh(self.conv(x) + emb[:, :, None, None])
        return EncoderOutput(h, [h], emb)


class TinyDecoder(nn.Module):
    def __init__(self, encoder_channels: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2 * encoder_channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, f: EncoderOutput) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(torch.cat([f.h, f.skips[0]], 1))))


class TinyBackbone(Backbone):
    """Two-layer conv net, epsilon prediction on VP (tests only)."""

    presets = {"tiny": {"model": {"encoder_channels": 8, "decoder_channels": [8, 6, 4]}, "dataset": {"resolution": 8}}}

    def build_encoder(self, params, channels, in_channels, resolution):
        return TinyEncoder(channels, in_channels)

    def build_decoder(self, params, encoder_channels, channels, out_channels, resolution, stage):
        return TinyDecoder(encoder_channels, channels, out_channels)


if NAME not in BACKBONES:
    BACKBONES.register(NAME, TinyBackbone())  # an instance: validate.py calls validate(cfg) on what is registered


def tiny_config(*overrides: str):
    """A resolved run config for the tiny multistage model (boundaries 0.4420 / 0.6308), not validated (the
    clusterers and stage policies it names live on other branches)."""
    base = [f"model.backbone={NAME}", "model.preset=tiny", "stages.boundaries=[0.4420,0.6308]"]
    return load_config([], [*base, *overrides], validate=False)


def tiny_model(seed: int = 0, *overrides: str):
    cfg = tiny_config(*overrides)
    torch.manual_seed(seed)
    return build_denoiser(cfg).eval(), cfg


def tiny_checkpoint(path: Path, *overrides: str) -> Path:
    model, cfg = tiny_model(0, *overrides)
    return save_checkpoint(path, {"step": 0, "config": to_dict(cfg), "model": model.state_dict(), "ema": None,
                                  "optimizer": None, "extra": {}})
