"""One-to-one key mapping between an official state dict and an msrepro one, with every shape checked.

A :class:`KeyMap` is a list of :class:`Rule` s, each naming one msrepro key, the official key(s) it is made from and
a transform (:data:`TRANSFORMS`). Applying it (:meth:`KeyMap.to_ours`) is strict:

- every official key must be consumed by a rule or listed in ``ignored`` (with the reason), and every msrepro key
  must be produced: a key left over on either side is an error that names it;
- every transformed tensor must have exactly the shape of the msrepro tensor it fills;
- ``check`` rules do not copy anything: the official buffer (e.g. EDM's ``resample_filter``) must equal the one
  msrepro computes itself (a non-persistent buffer of the same module).

:meth:`KeyMap.to_official` is the inverse (used by the tests to write files in the official layouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from msrepro.config import ConfigError

Tensor = torch.Tensor


class ConversionError(ConfigError):
    """An official checkpoint that cannot be mapped one to one: says which key, which shape, what to do."""


def _nin_to_conv(ts: Sequence[Tensor]) -> Tensor:
    return ts[0].t()[:, :, None, None]            # score_sde NIN.W [in, out] -> 1x1 conv [out, in, 1, 1]


def _conv_to_nin(t: Tensor) -> list[Tensor]:
    return [t[:, :, 0, 0].t().contiguous()]


def _nin3_to_conv(ts: Sequence[Tensor]) -> Tensor:
    return torch.cat([w.t() for w in ts], 0)[:, :, None, None]   # q, k, v NINs -> one fused qkv conv


def _conv_to_nin3(t: Tensor) -> list[Tensor]:
    return [w[:, :, 0, 0].t().contiguous() for w in t.chunk(3, 0)]


def _interleaved_to_blocked(ts: Sequence[Tensor]) -> Tensor:
    """EDM's fused qkv rows are ordered (channel, q/k/v); msrepro's (q/k/v, channel)."""
    t = ts[0]
    c = t.shape[0] // 3
    return t.reshape(c, 3, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def _blocked_to_interleaved(t: Tensor) -> list[Tensor]:
    c = t.shape[0] // 3
    return [t.reshape(3, c, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()]


#: kind -> (official tensors -> ours, ours -> official tensors)
TRANSFORMS: dict[str, tuple[Callable[[Sequence[Tensor]], Tensor], Callable[[Tensor], list[Tensor]]]] = {
    "copy": (lambda ts: ts[0], lambda t: [t]),
    "nin": (_nin_to_conv, _conv_to_nin),                       # score_sde NIN weight
    "nin3": (_nin3_to_conv, _conv_to_nin3),                    # score_sde NIN_0/1/2 weights -> qkv
    "cat3": (lambda ts: torch.cat(list(ts), 0), lambda t: [c.contiguous() for c in t.chunk(3, 0)]),  # their biases
    "interleave3": (_interleaved_to_blocked, _blocked_to_interleaved),  # EDM qkv weight / bias
    "conv1d": (lambda ts: ts[0][..., None], lambda t: [t[..., 0].contiguous()]),  # openaimodel conv_nd(1, ...)
    "check": (lambda ts: ts[0], lambda t: [t]),                # official buffer == msrepro's computed buffer
}


@dataclass(frozen=True)
class Rule:
    """``ours`` (msrepro key) is made from ``official`` key(s) by transform ``kind``."""

    ours: str
    official: tuple[str, ...]
    kind: str = "copy"


def block_rules(table: dict[str, str], ours_prefix: str, official_prefix: str, present: Iterable[str],
                kinds: dict[str, str] | None = None) -> list[Rule]:
    """Rules for one module from a name table ``{official_sub: ours_sub}`` (e.g. ``GroupNorm_0 -> norm0``),
    for the parameter leaves ``present`` in the msrepro module (``weight``, ``bias``)."""
    kinds = kinds or {}
    rules = []
    for off, ours in table.items():
        for leaf in present:
            if leaf.startswith(ours + "."):
                tail = leaf[len(ours) + 1:]
                rules.append(Rule(f"{ours_prefix}.{leaf}", (f"{official_prefix}.{off}.{tail}",),
                                  kinds.get(f"{off}.{tail}", "copy")))
    return rules


@dataclass
class KeyMap:
    """The rules of one checkpoint, plus official keys consumed without a counterpart (name -> reason)."""

    rules: list[Rule]
    ignored: dict[str, str] = field(default_factory=dict)
    provided: tuple[str, ...] = ()     # msrepro keys the caller fills itself (e.g. the VAE's scale factor)

    def official_keys(self) -> list[str]:
        return [k for r in self.rules for k in r.official]

    def check_coverage(self, official: dict[str, Tensor], ours: dict[str, Tensor]) -> None:
        """Leftover keys on either side are errors that name them (at most 8 of each)."""
        wanted = self.official_keys()
        copied = [r.ours for r in self.rules if r.kind != "check"]
        if len(set(wanted)) != len(wanted) or len(set(copied)) != len(copied):
            raise AssertionError("key map is not one to one")  # a bug in a format's rule generator
        extra = [k for k in official if k not in set(wanted) and k not in self.ignored]
        missing = [k for k in wanted if k not in official]
        produced = {r.ours for r in self.rules if r.kind != "check"}
        unfilled = [k for k in ours if k not in produced and k not in self.provided]
        for what, keys in (("keys of the file that the inferred architecture has no place for", extra),
                           ("keys the inferred architecture needs that the file lacks", missing),
                           ("msrepro keys with no official key mapped to them", unfilled)):
            if keys:
                raise ConversionError(f"{len(keys)} {what}: {', '.join(keys[:8])}"
                                      f"{' ...' if len(keys) > 8 else ''}")

    def to_ours(self, official: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """``model``'s state dict filled from ``official`` (shapes checked one to one, buffers compared)."""
        ours = model.state_dict()
        self.check_coverage(official, ours)
        computed = dict(model.named_buffers())
        out: dict[str, Tensor] = {}
        for r in self.rules:
            src = [official[k] for k in r.official]
            if not all(torch.is_tensor(t) for t in src):
                raise ConversionError(f"{', '.join(r.official)}: not a tensor")
            if r.kind == "check":
                _check_buffer(r, src[0], computed)
                continue
            shapes = [tuple(t.shape) for t in src]
            try:
                value = TRANSFORMS[r.kind][0](src)
            except (RuntimeError, IndexError) as exc:
                raise ConversionError(f"{', '.join(r.official)} {shapes} cannot become {r.ours}: {exc}") from None
            target = ours[r.ours]
            if tuple(value.shape) != tuple(target.shape):
                raise ConversionError(f"shape mismatch: {', '.join(r.official)} {shapes} -> {r.ours} needs "
                                      f"{tuple(target.shape)} (got {tuple(value.shape)})")
            out[r.ours] = value.detach().to(target.dtype).contiguous().clone()
        return out

    def to_official(self, model: nn.Module) -> dict[str, Tensor]:
        """The inverse: ``model``'s weights (and computed buffers) under the official key names."""
        ours = model.state_dict()
        computed = dict(model.named_buffers())
        out: dict[str, Tensor] = {}
        for r in self.rules:
            value = computed[r.ours] if r.kind == "check" else ours[r.ours]
            for key, t in zip(r.official, TRANSFORMS[r.kind][1](value.detach().clone())):
                out[key] = t
        return out


def _check_buffer(rule: Rule, official: Tensor, computed: dict[str, Tensor]) -> None:
    mine = computed.get(rule.ours)
    if mine is None:
        raise AssertionError(f"no computed buffer {rule.ours}")  # a bug in a format's rule generator
    if tuple(official.shape) != tuple(mine.shape) or not torch.allclose(
            official.to(torch.float64), mine.to(torch.float64), rtol=1e-6, atol=1e-9):
        raise ConversionError(f"{rule.official[0]} {tuple(official.shape)} differs from the buffer msrepro computes "
                              f"for {rule.ours} {tuple(mine.shape)}: {official.flatten()[:6].tolist()} vs "
                              f"{mine.flatten()[:6].tolist()} (a resampling filter other than the inferred one?)")
