"""Inception weights for FID: where they are looked for, the offline error, and ``msrepro prefetch inception``.

torch-fidelity's ``inception-v3-compat`` downloads its weights through ``torch.hub`` on first use. msrepro never
lets it: the file is located first (explicit path > ``$MSREPRO_INCEPTION_WEIGHTS`` > torch hub's checkpoint
folder, where torch-fidelity itself would put it) and handed to torch-fidelity as ``feature_extractor_weights_path``;
a missing file is an error, raised before any sampling, that names the file and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from msrepro.prefetch import cache_dir, register_target

EXTRACTOR_NAME = "inception-v3-compat"
#: the basename of torch-fidelity's URL_INCEPTION_V3 (tested); torch-fidelity is imported only when used
FILENAME = "weights-inception-2015-12-05-6726825d.pth"


def weights_url() -> str:
    """torch-fidelity's download URL of the weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3
ENV = "MSREPRO_INCEPTION_WEIGHTS"


class InceptionWeightsMissing(FileNotFoundError):
    """The Inception weights file is not on this machine; the message says what to fetch and where to put it."""


def hub_path() -> Path:
    """Where torch-fidelity (torch.hub.load_state_dict_from_url) looks for and stores the weights."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / FILENAME


def weights_path(explicit: str | Path | None = None) -> Path:
    """The Inception weights file to use: ``explicit`` > $MSREPRO_INCEPTION_WEIGHTS > torch hub's folder."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return hub_path()


def require_weights(explicit: str | Path | None = None) -> Path:
    """The weights file, or :class:`InceptionWeightsMissing` naming it and the ways to provide it."""
    path = weights_path(explicit)
    if path.is_file():
        return path
    raise InceptionWeightsMissing(
        f"FID needs torch-fidelity's Inception weights, and {path} does not exist (nothing was sampled). "
        f"Run `msrepro prefetch inception` on a machine with internet (it writes {hub_path()}), or download "
        f"{weights_url()} and put the file at {path}; a file elsewhere can be named with ${ENV}=PATH or "
        f"eval.params.inception_weights=PATH.")


@register_target("inception", f"torch-fidelity Inception-v3 weights for FID ({FILENAME}, ~92 MB)")
def fetch_inception(dest: Path) -> Path:
    """Download the weights into torch hub's folder (where torch-fidelity looks), or into ``dest`` if given."""
    from torch.hub import download_url_to_file

    target = hub_path() if Path(dest) == cache_dir() else Path(dest) / FILENAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    download_url_to_file(weights_url(), str(target), progress=True)
    return target
