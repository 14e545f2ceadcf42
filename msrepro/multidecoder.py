"""The multi-decoder mechanism (paper Sec. 4.1, Fig. 1c), written once for every U-Net family.

A backbone supplies an encoder (input conv, down path, noise embedding and, where the family has it there, the
middle block) returning :class:`EncoderOutput`, and decoders (up path and head) that consume it. Skips are
produced at encoder width and concatenated inside each decoder, whatever that decoder's own width.

:class:`MultiStageNet` holds one shared encoder (or one per stage, for the ``separate`` variants) and K decoders,
and routes each sample to the decoder of its stage: the whole batch at once when all samples share a stage,
otherwise per sample, running each decoder on its sub-batch and scattering the results back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What an encoder hands its decoders: the bottleneck, the skips (outermost first) and the embedding."""

    h: torch.Tensor
    skips: list[torch.Tensor]
    emb: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-sample tensors a family needs

    def select(self, idx: torch.Tensor) -> "EncoderOutput":
        """The same features for the samples ``idx`` only."""
        pick = lambda t: t.index_select(0, idx)  # noqa: E731
        return EncoderOutput(pick(self.h), [pick(s) for s in self.skips],
                             None if self.emb is None else pick(self.emb),
                             {k: pick(v) for k, v in self.extra.items()})


class MultiStageNet(nn.Module):
    """Encoders (one shared, or one per stage) and one decoder per stage, routed by a per-sample stage index.

    ``forward(x, c_noise, stage, **cond)``: ``stage`` is a LongTensor [B] (or None for stage 0); encoder calls are
    ``encoder(x, c_noise, **cond) -> EncoderOutput`` and decoder calls ``decoder(features) -> Tensor``.
    """

    def __init__(self, encoders: Sequence[nn.Module], decoders: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(decoders) < 1 or len(encoders) not in (1, len(decoders)):
            raise ValueError(f"need K >= 1 decoders and 1 or K encoders, got {len(encoders)} and {len(decoders)}")
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)

    @property
    def num_stages(self) -> int:
        return len(self.decoders)

    @property
    def shared_encoder(self) -> bool:
        return len(self.encoders) == 1

    def encoder_for(self, stage: int) -> nn.Module:
        return self.encoders[0 if self.shared_encoder else stage]

    def forward_stage(self, x: torch.Tensor, c_noise: torch.Tensor, stage: int, **cond: Any) -> torch.Tensor:
        """Run the whole batch through stage ``stage``'s encoder and decoder."""
        return self.decoders[stage](self.encoder_for(stage)(x, c_noise, **cond))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, stage: torch.Tensor | None = None,
                **cond: Any) -> torch.Tensor:
        if stage is None:
            stage = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        stage = stage.to(x.device)
        if stage.min() < 0 or stage.max() >= self.num_stages:
            raise ValueError(f"stage indices must be in [0, {self.num_stages}), got {stage.unique().tolist()}")
        present = torch.unique(stage).tolist()
        if len(present) == 1:  # one stage for the whole batch: no gather/scatter
            return self.forward_stage(x, c_noise, present[0], **cond)
        groups = [(k, (stage == k).nonzero(as_tuple=True)[0]) for k in present]
        cond_of = lambda idx: {k: (v.index_select(0, idx) if torch.is_tensor(v) and v.shape[:1] == x.shape[:1]  # noqa: E731
                                   else v) for k, v in cond.items()}
        out: torch.Tensor | None = None
        feats = self.encoders[0](x, c_noise, **cond) if self.shared_encoder else None
        for k, idx in groups:
            if feats is not None:
                y = self.decoders[k](feats.select(idx))
            else:
                y = self.forward_stage(x.index_select(0, idx), c_noise.index_select(0, idx), k, **cond_of(idx))
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out.index_copy_(0, idx, y)
        assert out is not None
        return out

    def stage_modules(self, stage: int) -> list[nn.Module]:
        """The modules stage ``stage`` runs through (for per-stage parameter and FLOP accounting)."""
        return [self.encoder_for(stage), self.decoders[stage]]
