"""The embedded default's metric space: a small digits classifier, trained deterministically in seconds, cached.

"FD-digits" is the Fréchet distance computed exactly like FID (by torch-fidelity) but on this classifier's
penultimate features instead of Inception's pool features. One classifier per resolution, trained on the digits
train split at that resolution and stored with its held-out test accuracy under ``<cache>/digits_classifier/``.
It is registered with torch-fidelity as the feature extractor ``msrepro-digits``; torch-fidelity's own
``feature_extractor_weights_path`` kwarg selects the classifier file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from msrepro.io import atomic_write, atomic_write_json
from msrepro.prefetch import cache_dir

logger = logging.getLogger(__name__)

EXTRACTOR_NAME = "msrepro-digits"
FEATURE_DIM = 64
FORMAT = "msrepro-digits-classifier-v1"
EPOCHS = 12
BATCH = 50


class DigitsCNN(nn.Module):
    """Input resized to 16 px, three 3x3 convolutions (16 -> 8 -> 4 px), a 64-d linear feature layer, 10 logits."""

    WORK = 16  # working resolution: the digits are 8x8 originals, so 16 px loses nothing

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.convs = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(),
        )
        self.features = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: [B, 1, H, W] in [-1, 1] -> (64-d features before the ReLU, logits)."""
        if x.shape[-1] != self.WORK or x.shape[-2] != self.WORK:
            x = F.interpolate(x, size=(self.WORK, self.WORK), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.WORK)
        f = self.features(self.convs(x).flatten(1))
        return f, self.head(F.relu(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


def _digits(split: str, resolution: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    from msrepro.datasets.digits import Digits

    ds = Digits({"name": "digits", "resolution": resolution, "split": split})
    return ds.tensor(), ds.labels().long(), ds.checksum()


def train_classifier(resolution: int, *, seed: int = 0, epochs: int = EPOCHS) -> tuple[DigitsCNN, dict]:
    """Train a DigitsCNN on the digits train split (Adam, fixed seed and batch order, one CPU thread so the float
    results do not depend on the thread count); returns (model, info)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(resolution, seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(resolution: int, seed: int, epochs: int) -> tuple[DigitsCNN, dict]:
    x, y, checksum = _digits("train", resolution)
    xt, yt, _ = _digits("test", resolution)
    torch.manual_seed(seed)
    model = DigitsCNN(resolution)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    info = {"resolution": resolution, "seed": seed, "epochs": epochs, "train_checksum": checksum,
            "train_accuracy": accuracy(model, x, y), "test_accuracy": accuracy(model, xt, yt)}
    return model, info


@torch.no_grad()
def accuracy(model: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` ([N, 1, R, R] in [-1, 1]) classified as ``y``."""
    return float((model(x).argmax(1) == y).float().mean())


def classifier_path(resolution: int) -> Path:
    return cache_dir() / "digits_classifier" / f"digits-r{resolution}.pt"


def ensure_classifier(resolution: int) -> Path:
    """The cached classifier file for ``resolution``, trained (seconds) and written on first use."""
    path = classifier_path(resolution)
    if path.is_file():
        return path
    logger.info("training the digits classifier at %d px (once; cached at %s)", resolution, path)
    model, info = train_classifier(resolution)
    state = {"format": FORMAT, "info": info, "state_dict": model.state_dict()}
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    atomic_write_json(path.with_suffix(".json"), info)
    logger.info("digits classifier: test accuracy %.4f", info["test_accuracy"])
    return path


def load_classifier(path: str | Path) -> tuple[DigitsCNN, dict]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a digits classifier file (expected format '{FORMAT}')")
    model = DigitsCNN(int(state["info"]["resolution"]))
    model.load_state_dict(state["state_dict"])
    return model.eval(), state["info"]


def file_digest(path: str | Path, length: int = 12) -> str:
    """Short SHA-256 of a file (identifies the extractor weights in cache keys and provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:length]


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over the digits classifier: uint8 [B, 1 or 3, H, W] -> features."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR_NAME} needs feature_extractor_weights_path (see ensure_classifier)")
        self.net, self.info = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expecting uint8 images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
        x = x.float().mean(dim=1, keepdim=True) / 127.5 - 1.0  # gray (RGB copies of one channel stay exact)
        feats, logits = self.net.forward_features(x)
        out = {str(FEATURE_DIM): feats, "logits": logits}
        return tuple(out[k].float() for k in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return str(FEATURE_DIM), "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": str(FEATURE_DIM), "kid": str(FEATURE_DIM), "prc": str(FEATURE_DIM)}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, DigitsFeatureExtractor)


def describe(path: str | Path) -> str:
    info = json.loads(Path(path).with_suffix(".json").read_text()) if Path(path).with_suffix(".json").is_file() \
        else load_classifier(path)[1]
    return f"digits classifier {info['resolution']} px (test accuracy {info['test_accuracy']:.3f})"
