"""The first-stage loss (latent-diffusion ``LPIPSWithDiscriminator``): L1 + LPIPS + KL, and an optional PatchGAN
discriminator (hinge loss) switched on after a warm-up, weighted adaptively (Esser et al. 2021, Eq. 7).

LPIPS comes from the ``lpips`` package. Its linear heads ship with the package; the ImageNet backbone (torchvision
VGG-16 or AlexNet) must be fetched once with ``msrepro prefetch lpips`` - nothing downloads here, a missing file
raises :class:`~msrepro.datasets.OfflineDataError` naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from msrepro.datasets.base import OfflineDataError
from msrepro.prefetch import cache_dir, register_target

#: torchvision ImageNet weights behind LPIPS (file names as torchvision's hub cache stores them)
LPIPS_BACKBONES = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}


def lpips_weights_path(net: str) -> Path:
    """Where the backbone weights are read: ``<msrepro cache>/lpips/FILE``, else torch hub's checkpoint cache."""
    name = LPIPS_BACKBONES[net].rsplit("/", 1)[-1]
    ours = cache_dir() / "lpips" / name
    if ours.is_file():
        return ours
    hub = Path(torch.hub.get_dir()) / "checkpoints" / name
    return hub if hub.is_file() else ours


@register_target("lpips", "torchvision VGG-16 and AlexNet ImageNet weights for LPIPS (VAE loss and metric)")
def prefetch_lpips(dest: Path) -> Path:
    folder = Path(dest) / "lpips"
    folder.mkdir(parents=True, exist_ok=True)
    for url in LPIPS_BACKBONES.values():
        target = folder / url.rsplit("/", 1)[-1]
        if not target.is_file():
            torch.hub.download_url_to_file(url, str(target), progress=True)
    return folder


def build_lpips(net: str = "vgg", *, random_backbone: bool = False) -> nn.Module:
    """``lpips.LPIPS`` (v0.1, linear heads from the package) with its backbone loaded from the prefetched file.

    ``random_backbone=True`` (tests only) keeps a randomly initialised backbone and needs no file.
    """
    import lpips  # optional and heavy (torchvision backbones): only when an LPIPS loss is built

    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS net '{net}' is not valid; allowed: {', '.join(LPIPS_BACKBONES)}")
    path = lpips_weights_path(net)
    if not random_backbone and not path.is_file():
        raise OfflineDataError(
            f"LPIPS backbone weights not found: {path}. Fetch them where there is internet with `msrepro prefetch "
            f"lpips` (writes {cache_dir() / 'lpips'}), or copy torchvision's {path.name} there "
            f"(from {LPIPS_BACKBONES[net]}); or set loss.lpips_weight=0")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    if not random_backbone:
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("features.")}
        for sl in (getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)):
            for idx, layer in sl.named_children():
                own = {k: features[f"{idx}.{k}"] for k in layer.state_dict()}
                layer.load_state_dict(own)
    return model.eval().requires_grad_(False)


def lpips_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS per sample for images in [-1, 1]; single-channel images are repeated to RGB."""
    if x.shape[1] == 1:
        x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    return model(x.contiguous(), y.contiguous()).flatten()


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``): per-patch real/fake logits."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < layers else 1
            seq += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                    nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        seq.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*seq)
        for m in self.modules():  # taming weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class VAELoss(nn.Module):
    """nll = sum_pixels(|x - x_rec| + w_lpips LPIPS) / B; loss = nll + w_kl KL + [step >= disc_start] w_d g."""

    def __init__(self, cfg: Any, in_channels: int, lpips_model: nn.Module | None = None) -> None:
        super().__init__()
        self.kl_weight, self.lpips_weight = float(cfg.kl_weight), float(cfg.lpips_weight)
        self.disc_start, self.disc_weight = cfg.disc_start, float(cfg.disc_weight)
        self.lpips = lpips_model if lpips_model is not None else (
            build_lpips(cfg.lpips_net) if self.lpips_weight > 0 else None)
        self.disc = NLayerDiscriminator(in_channels, int(cfg.disc_channels), int(cfg.disc_layers)) \
            if cfg.disc_start is not None else None

    def disc_active(self, step: int) -> bool:
        return self.disc is not None and step >= int(self.disc_start)

    def perceptual(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        """LPIPS per sample (single-channel images repeated to RGB), inputs in [-1, 1]."""
        assert self.lpips is not None
        return lpips_distance(self.lpips, x, rec)

    def generator_loss(self, x: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor, step: int,
                       last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss and its logged parts."""
        rec_px = (x - rec).abs()
        if self.lpips is not None and self.lpips_weight > 0:
            rec_px = rec_px + self.lpips_weight * self.perceptual(x, rec)[:, None, None, None]
        nll = rec_px.flatten(1).sum(1).mean()
        loss = nll + self.kl_weight * kl.mean()
        logs = {"nll": nll.item(), "kl": kl.mean().item(), "l1": (x - rec).detach().abs().mean().item()}
        if self.disc_active(step):
            g = -self.disc(rec).mean()
            w = self.adaptive_weight(nll, g, last_layer) if last_layer is not None else torch.tensor(1.0)
            loss = loss + self.disc_weight * w * g
            logs.update(g_loss=g.item(), d_weight=float(w))
        return loss, logs

    @staticmethod
    def adaptive_weight(nll: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """||grad_L nll|| / (||grad_L g|| + 1e-4), clamped to [0, 1e4], on the decoder's last layer L."""
        gn = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
        return (gn.norm() / (gg.norm() + 1e-4)).clamp(0.0, 1e4).detach()

    def discriminator_loss(self, x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        assert self.disc is not None
        return hinge_d_loss(self.disc(x.detach()), self.disc(rec.detach()))
