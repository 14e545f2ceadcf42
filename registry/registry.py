"""A flat, explicit registry: one per kind of component.

Modelled on mmengine's ``register_module`` (decorator or call, duplicates raise, ``build(cfg)``) and timm's
``list_models`` (wildcard listing), without scopes, parents or lazy dotted imports. Outside packages plug in
through entry points (group ``msrepro.<kind>``), discovered once; a plugin that fails to load is recorded
with its error and reported by ``msrepro list``, never silently skipped.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, Mapping, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate registry name; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain sentence
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry:
    """One registered object and where it came from."""

    name: str
    obj: Any
    description: str
    origin: str  # "builtin" or "plugin:<distribution or module>"


@dataclass(frozen=True)
class PluginFailure:
    """An entry point that raised while loading."""

    group: str
    name: str
    value: str
    error: str


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Named objects of one kind (backbones, clusterers, ...).

    ``register`` works as a decorator (``@REG.register()`` or ``@REG.register("name")``) or as a call
    (``REG.register("name", obj)``). Registering a taken name raises unless ``force=True``.
    """

    def __init__(self, kind: str, *, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group or f"msrepro.{kind}"
        self._entries: dict[str, Entry] = {}
        self._deprecated: dict[str, str] = {}
        self._origin: str = "builtin"

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | Any | None = None,
        obj: Any = None,
        *,
        force: bool = False,
        description: str | None = None,
    ) -> Any:
        """Register ``obj`` under ``name`` (default: ``obj.name`` or ``obj.__name__``)."""
        if name is not None and not isinstance(name, str):  # used as a bare decorator: @REG.register
            return self._add(None, name, force=force, description=description)
        if obj is not None:
            return self._add(name, obj, force=force, description=description)

        def decorator(target: T) -> T:
            return self._add(name, target, force=force, description=description)

        return decorator

    def _add(self, name: str | None, obj: Any, *, force: bool, description: str | None) -> Any:
        key = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"cannot infer a registry name for {obj!r}; pass name=...")
        if key in self._entries and not force:
            prev = self._entries[key]
            raise RegistryError(
                f"{self.kind} '{key}' is already registered (by {prev.origin}: {prev.obj!r}); "
                f"choose another name or pass force=True to replace it"
            )
        desc = description if description is not None else _first_doc_line(obj)
        self._entries[key] = Entry(key, obj, desc, self._origin)
        return obj

    def register_deprecation(self, old: str, new: str) -> None:
        """Keep ``old`` working as an alias of ``new`` (with a warning), like timm's deprecations."""
        self._deprecated[old] = new

    # -- lookup ---------------------------------------------------------------------------------
    def _resolve(self, name: str) -> str:
        ensure_loaded()
        if name in self._deprecated:
            import warnings

            new = self._deprecated[name]
            warnings.warn(f"{self.kind} '{name}' is deprecated; use '{new}'", DeprecationWarning, stacklevel=3)
            name = new
        if name not in self._entries:
            raise RegistryError(self._unknown_message(name))
        return name

    def _unknown_message(self, name: str) -> str:
        valid = sorted(self._entries)
        close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        failed = [f for f in plugin_failures() if f.group == self.entry_point_group]
        extra = "".join(f"\n  (plugin '{f.name}' failed to load: {f.error})" for f in failed)
        return f"unknown {self.kind} '{name}'. Valid names: {', '.join(valid) or '(none)'}.{hint}{extra}"

    def get(self, name: str) -> Any:
        """The object registered as ``name``; unknown names raise a RegistryError listing valid ones."""
        return self._entries[self._resolve(name)].obj

    def entry(self, name: str) -> Entry:
        return self._entries[self._resolve(name)]

    def check(self, name: str) -> str:
        """Raise early (before any work) if ``name`` is not registered; return the resolved name."""
        return self._resolve(name)

    def build(self, cfg: Mapping[str, Any] | Any, **extra: Any) -> Any:
        """Build from a config node: ``type`` (or ``name``) picks the entry, the other keys are kwargs."""
        from omegaconf import DictConfig, OmegaConf

        params = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        key = "type" if "type" in params else "name"
        if key not in params:
            raise RegistryError(f"cannot build a {self.kind} from {params}: it has no 'type' (or 'name') key")
        factory = self.get(params.pop(key))
        params.update(extra)
        return factory(**params)

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.list(pattern)]

    def __contains__(self, name: object) -> bool:
        ensure_loaded()
        return name in self._entries or name in self._deprecated

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        from tabulate import tabulate

        rows = [(e.name, e.description, e.origin) for e in self.entries()]
        body = tabulate(rows, headers=["name", "description", "origin"], disable_numparse=True) if rows else "(empty)"
        return f"Registry({self.kind})\n{body}"


# -- discovery -----------------------------------------------------------------------------------
_REGISTRIES: dict[str, Registry] = {}
_FAILURES: list[PluginFailure] = []
_LOADED = False
_LOADING = False


def new_registry(kind: str) -> Registry:
    if kind in _REGISTRIES:
        raise RegistryError(f"registry '{kind}' already exists")
    reg = Registry(kind)
    _REGISTRIES[kind] = reg
    return reg


def registries() -> dict[str, Registry]:
    return dict(_REGISTRIES)


def get_registry(kind: str) -> Registry:
    if kind not in _REGISTRIES:
        close = difflib.get_close_matches(kind, sorted(_REGISTRIES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown registry '{kind}'. Valid registries: {', '.join(sorted(_REGISTRIES))}.{hint}")
    return _REGISTRIES[kind]


def plugin_failures() -> list[PluginFailure]:
    return list(_FAILURES)


def _load_entry_points() -> None:
    for kind, reg in _REGISTRIES.items():
        for ep in entry_points(group=reg.entry_point_group):
            for r in _REGISTRIES.values():
                r._origin = "builtin" if ep.value.startswith("msrepro.") else f"plugin:{ep.value}"
            try:
                loaded = ep.load()
                if callable(loaded) and not inspect.ismodule(loaded):
                    loaded()  # an entry point may name a register() function instead of a module
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                logger.warning("msrepro plugin %s = %s (group %s) failed to load: %s: %s", ep.name, ep.value,
                               ep.group, type(exc).__name__, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
                _FAILURES.append(PluginFailure(ep.group, ep.name, ep.value, f"{type(exc).__name__}: {exc}"))
            finally:
                for r in _REGISTRIES.values():
                    r._origin = "builtin"


def ensure_loaded() -> None:
    """Import the built-in manifest, then every entry-point plugin; runs once per process."""
    global _LOADED, _LOADING
    if _LOADED or _LOADING:
        return
    _LOADING = True
    try:
        importlib.import_module("msrepro._builtins")
        _load_entry_points()
        _LOADED = True
    finally:
        _LOADING = False


__all__ = [
    "Entry",
    "PluginFailure",
    "Registry",
    "RegistryError",
    "ensure_loaded",
    "get_registry",
    "new_registry",
    "plugin_failures",
    "registries",
]
