"""Writers of official checkpoint files for the import tests: random weights made by the tests, the official key
names (from msrepro's key maps, whose names ``test_convert.py`` checks against the official code), and each
format's container layout (score_sde's run_lib dict, EDM's persistence pickle, latent-diffusion's Lightning .ckpt).

The EDM pickle is written the way EDM's ``training_loop`` writes ``network-snapshot-*.pkl``: ``pickle.dump`` of
``{"ema": EDMPrecond, "loss_fn", "augment_pipe", "dataset_kwargs"}`` where every network class reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with its module source in ``meta``. Here the source
is a line that raises, and ``_reconstruct_persistent_obj`` is a stand-in that raises, so any reader that executed
either would fail the test.
"""

from __future__ import annotations

import collections
import copyreg
import math
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

EDM_SOURCE = "raise RuntimeError('the pickled EDM source was executed')\n"


def _never_called(meta: Any) -> Any:
    raise AssertionError("torch_utils.persistence._reconstruct_persistent_obj was called")


_never_called.__module__, _never_called.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
_never_called.__name__ = "_reconstruct_persistent_obj"


def install_fake_persistence() -> None:
    """Make ``torch_utils.persistence._reconstruct_persistent_obj`` resolvable for pickle.dump (by reference)."""
    pkg = sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
    mod = sys.modules.setdefault("torch_utils.persistence", types.ModuleType("torch_utils.persistence"))
    mod._reconstruct_persistent_obj = _never_called
    pkg.persistence = mod


class Persistent:
    """Reduces exactly like an instance of an EDM ``@persistent_class``."""

    def __init__(self, class_name: str, state: dict[str, Any]) -> None:
        self.class_name, self.state = class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=EDM_SOURCE, class_name=self.class_name, state=self.state)
        return (_never_called, (meta,))


class TorchContainer:
    """Reduces like a torch.nn.ModuleDict / ModuleList (protocol-2 NEWOBJ of the real class, then its __dict__)."""

    def __init__(self, cls: type, modules: dict[str, Any]) -> None:
        self.cls, self.state = cls, module_state({}, {}, modules)

    @property  # type: ignore[misc]
    def __class__(self):  # pickle's NEWOBJ check compares obj.__class__ with the class it names
        return self.cls

    def __reduce__(self):
        return (copyreg.__newobj__, (self.cls,), self.state)


def module_state(params: dict, buffers: dict, modules: dict, **attrs: Any) -> dict[str, Any]:
    """An nn.Module __dict__ as torch pickles it."""
    return {"training": False, "_parameters": collections.OrderedDict(params),
            "_buffers": collections.OrderedDict(buffers), "_non_persistent_buffers_set": set(),
            "_backward_hooks": collections.OrderedDict(), "_forward_hooks": collections.OrderedDict(),
            "_forward_pre_hooks": collections.OrderedDict(), "_state_dict_hooks": collections.OrderedDict(),
            "_modules": collections.OrderedDict(modules), **attrs}


def _tree(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in flat.items():
        node = root
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return root


def _edm_module(name: str, node: dict[str, Any]) -> Any:
    """A persistent module (or torch container) for one node of EDM's module tree."""
    params = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in node.items()
              if torch.is_tensor(v) and k != "resample_filter"}
    buffers = {"resample_filter": node["resample_filter"]} if "resample_filter" in node else {}
    children = {k: _edm_module(k, v) for k, v in node.items() if isinstance(v, dict)}
    if name in ("enc", "dec") or (name.isdigit() and all("x" in k for k in children)):
        return TorchContainer(torch.nn.ModuleDict, children)
    if name == "decs":
        return TorchContainer(torch.nn.ModuleList, children)
    if "norm0" in children:
        return Persistent("UNetBlock", module_state(params, buffers, children, skip_scale=np.float64(np.sqrt(0.5)),
                                                    dropout=0.13, num_heads=1 if "qkv" in children else 0,
                                                    _init_kwargs={"resample_filter": [1, 1], "eps": 1e-6}))
    kind = {1: "GroupNorm", 2: "Linear", 4: "Conv2d"}[node["weight"].ndim] if "weight" in node else "Module"
    return Persistent(kind, module_state(params, buffers, children, _init_args=(), _init_kwargs={}))


def write_edm_pickle(official: dict[str, torch.Tensor], path: Path, resolution: int, channels: int,
                     stage_interval: list | None = None, extra_state: dict[str, Any] | None = None) -> Path:
    """``official`` (EDMPrecond state dict) as an EDM ``network-snapshot`` pickle (``extra_state``: more
    attributes of the inner network)."""
    install_fake_persistence()
    tree = _tree(official)["model"]
    modules = {k: _edm_module(k, v) for k, v in tree.items()}
    modules["map_noise"] = Persistent("PositionalEmbedding", module_state({}, {}, {}, num_channels=0,
                                                                           max_positions=10000, endpoint=True))
    extra = {"stage_interval": stage_interval} if stage_interval is not None else {}
    extra.update(extra_state or {})
    unet = Persistent("MultistageUNet" if stage_interval else "SongUNet",
                      module_state({}, {}, modules, label_dropout=0, **extra))
    ema = Persistent("EDMPrecond", module_state({}, {}, {"model": unet}, img_resolution=resolution,
                                                img_channels=channels, label_dim=0, use_fp16=False, sigma_min=0,
                                                sigma_max=math.inf, sigma_data=0.5, model_type=unet.class_name))
    data = {"ema": ema, "loss_fn": Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}),
            "augment_pipe": None, "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset",
                                                     "path": "datasets/digits.zip", "use_labels": False}}
    with path.open("wb") as f:
        pickle.dump(data, f)
    return path


def write_score_sde(official: dict[str, torch.Tensor], path: Path, buffers: tuple[str, ...] = (),
                    ema_offset: float = 0.0) -> Path:
    """score_sde run_lib's checkpoint dict: DataParallel keys, EMA shadow params (raw + ``ema_offset``) in
    parameter order."""
    model = {"module." + k: v for k, v in official.items()}
    shadow = [v + ema_offset for k, v in official.items() if k not in buffers]
    torch.save({"model": model, "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow},
                "optimizer": {"state": {}, "param_groups": []}, "step": 123}, path)
    return path


def write_ldm_ckpt(unet: dict[str, torch.Tensor], path: Path, schedule: dict[str, Any],
                   first_stage: dict[str, torch.Tensor] | None = None, ema: dict[str, torch.Tensor] | None = None,
                   scale_factor: float | None = None) -> Path:
    """A latent-diffusion Lightning .ckpt: raw U-Net, LitEma buffers (dots removed), DDPM schedule buffers."""
    sd: dict[str, torch.Tensor] = dict(unet)
    for key, value in (ema or {}).items():
        sd["model_ema." + key[len("model."):].replace(".", "")] = value
    if ema is not None:
        sd["model_ema.decay"], sd["model_ema.num_updates"] = torch.tensor(0.9999), torch.tensor(10, dtype=torch.int)
    betas = torch.linspace(schedule["beta_start"] ** 0.5, schedule["beta_end"] ** 0.5, schedule["num_steps"],
                           dtype=torch.float64) ** 2
    cum = torch.cumprod(1 - betas, 0)
    sd.update({"betas": betas.float(), "alphas_cumprod": cum.float(), "alphas_cumprod_prev": torch.cat(
        [torch.ones(1, dtype=torch.float64), cum[:-1]]).float(), "sqrt_alphas_cumprod": cum.sqrt().float()})
    if scale_factor is not None:
        sd["scale_factor"] = torch.tensor(scale_factor)
    sd.update({"first_stage_model." + k: v for k, v in (first_stage or {}).items()})
    torch.save({"state_dict": sd, "global_step": 42, "epoch": 3, "pytorch-lightning_version": "1.4.2"}, path)
    return path
