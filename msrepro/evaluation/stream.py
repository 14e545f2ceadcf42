"""Streaming evaluation: a torch-fidelity generative model that draws exact, seeded samples from a checkpoint.

torch-fidelity asks a :class:`GenerativeModelBase` for batches (it passes noise of the batch's size); we ignore its
noise and take the next seeds of our list instead, generating through :mod:`msrepro.generation` (per-seed noise, so
an image depends on its seed only). Images go to the feature extractor as uint8, quantised exactly as PNG files
would hold them; no file is written unless asked (``png_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset
from torch_fidelity import GenerativeModelBase
from tqdm.auto import tqdm

from msrepro.generation import Generation, PNGWriter, quantize


class SampleStream(GenerativeModelBase):
    """Yields the images of ``seeds`` in order, one torch-fidelity batch at a time (``forward(noise)``)."""

    def __init__(self, generation: Generation, seeds: Sequence[int], *, png_dir: str | Path | None = None,
                 record: bool = False, progress: bool = True, desc: str = "sampling") -> None:
        super().__init__()
        self._gen = [generation]  # a list: keeps the denoiser out of this module's children (torch-fidelity
        self.seeds = list(seeds)  # calls .cuda() on us; the denoiser already sits on its device)
        self.pos = 0
        self.writer = PNGWriter(png_dir) if png_dir is not None else None
        self.recorded: list[torch.Tensor] = [] if record else None  # type: ignore[assignment]
        self.bar = tqdm(total=len(self.seeds), unit="img", desc=desc, disable=not progress)

    z_size = 1
    z_type = "normal"
    num_classes = 0

    @property
    def generation(self) -> Generation:
        return self._gen[0]

    def forward(self, noise: torch.Tensor, *args) -> torch.Tensor:
        n = noise.shape[0]
        seeds = self.seeds[self.pos:self.pos + n]
        if len(seeds) != n:
            raise RuntimeError(f"torch-fidelity asked for {self.pos + n} samples; the stream has {len(self.seeds)}")
        self.pos += n
        images = self.generation.run_batch(seeds).images
        if self.writer is not None:
            self.writer.write(seeds, images)
        x = quantize(images)
        x = x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x
        if self.recorded is not None:
            self.recorded.append(x.cpu())
        self.bar.update(n)
        self.bar.set_postfix(nfe=self.generation.nfe)
        if self.pos == len(self.seeds):
            self.bar.close()
        return x.to(noise.device)

    def replay(self) -> Dataset:
        """The recorded uint8 images as a Dataset (for a second feature space without sampling again)."""
        if self.recorded is None or self.pos != len(self.seeds):
            raise RuntimeError("nothing recorded (record=True and a complete pass are needed)")
        return _Images(torch.cat(self.recorded))


class _Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
