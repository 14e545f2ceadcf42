"""Reading EDM's network pickles without running any of their code.

EDM pickles its networks with ``torch_utils.persistence``: every network class travels as the *source text* of its
module, which ``pickle.load`` would ``exec``, and the containers, tensors and numbers in between are ordinary
pickle globals. :class:`SafeUnpickler` resolves only the globals that rebuild data:

- ``torch_utils.persistence._reconstruct_persistent_obj`` becomes :class:`PersistentObject` (class name + pickled
  state; the source text is kept as a digest and never executed);
- tensors and parameters (``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``; storages through
  ``torch.load(..., weights_only=True)``), ``collections.OrderedDict``, ``set``/``frozenset``, torch dtypes,
  numeric numpy scalars, and torch's plain containers (``ModuleDict``, ``ModuleList``, ``Sequential``) and
  ``dnnlib.util.EasyDict`` as inert stand-ins.

Every other global is refused with :class:`RefusedGlobal`, naming it, before anything is called.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

#: how EDM's own tools read the file, for the error message when this reader cannot
EDM_TOOL = ("only if you trust the file: load it with EDM's own code, as EDM's generate.py does (dnnlib.util.open_url "
            "+ pickle.load, inside a clone of NVlabs/edm; this runs the file's code), save net.state_dict() of the "
            "'ema' network with torch.save, and import that .pt file with the same format name")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that would run code; nothing was called."""


@dataclass
class PersistentObject:
    """Stand-in for an instance of an EDM persistent class: its class name and pickled ``__dict__``."""

    class_name: str
    state: dict[str, Any]
    source_sha256: str = ""


@dataclass
class Container:
    """Stand-in for a torch.nn container (ModuleDict, ModuleList, Sequential) or dnnlib's EasyDict."""

    kind: str
    state: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


class _EasyDict(dict):
    """Inert stand-in for ``dnnlib.util.EasyDict`` (a dict; attributes are ignored)."""

    def __setstate__(self, state: Any) -> None:
        pass


class _DType:
    """A numpy dtype by name, rebuilt without numpy's pickle machinery; only numeric kinds become scalars."""

    def __init__(self, name: Any, *_: Any) -> None:
        self.name, self.order = str(name), "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.order = state[1]


def _reconstruct_persistent(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("torch_utils.persistence object without a class name")
    src = meta.get("module_src", "")
    digest = hashlib.sha256(src.encode() if isinstance(src, str) else b"").hexdigest()
    state = meta.get("state") or {}
    return PersistentObject(meta["class_name"], dict(state), digest)


def _load_storage(data: bytes) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage is not bytes")
    return torch.load(io.BytesIO(data), weights_only=True)


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, collections.OrderedDict())


def _rebuild_parameter(data: Any, *_: Any) -> torch.Tensor:
    if not torch.is_tensor(data):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data.detach()


def _rebuild_from_type(func: Any, _new_type: Any, args: tuple, _state: Any) -> Any:
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("tensor subclass rebuilt by an unexpected function")
    return func(*args)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _DType) or not isinstance(data, bytes) or np.dtype(dtype.name).kind not in "biuf":
        raise RefusedGlobal("numpy scalar of a non-numeric dtype (it could hold an arbitrary object)")
    return np.frombuffer(data, dtype=np.dtype(dtype.name).newbyteorder(dtype.order))[0].item()


def _container(kind: str) -> type:
    return type(kind, (Container,), {"__init__": lambda self, *a, **k: Container.__init__(self, kind)})


_TORCH_DTYPES = ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool")
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch.nn.parameter", "Parameter"): None, ("torch", "Tensor"): None,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("numpy.core.multiarray", "scalar"): _np_scalar, ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "dtype"): _DType,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    **{("torch.nn.modules.container", n): _container(n) for n in ("ModuleDict", "ModuleList", "Sequential")},
    **{("torch", n): getattr(torch, n) for n in _TORCH_DTYPES},
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose only globals are :data:`_ALLOWED`; anything else raises RefusedGlobal."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise RefusedGlobal(f"global '{module}.{name}' is not allowed (it could run code)")
        found = _ALLOWED[(module, name)]
        return object if found is None else found  # tensor classes only serve as type tags

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by plain pickles")


def safe_load(f: BinaryIO) -> Any:
    """Unpickle ``f`` with :class:`SafeUnpickler` (no code from the file runs)."""
    return SafeUnpickler(f).load()


def load_pickle(path: str | Path) -> Any:
    """The object tree of a pickle file; a refused global or a broken file raises with EDM's way out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with path.open("rb") as f:
            return safe_load(f)
    except RefusedGlobal as exc:
        raise RefusedGlobal(f"{path}: cannot be read without running its code: {exc}. Nothing was executed. "
                            f"To convert it anyway, {EDM_TOOL}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise pickle.UnpicklingError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); if it is an "
                                     f"EDM network pickle, {EDM_TOOL}") from None


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a rebuilt module tree: parameters and persistent buffers, recursively, by name."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"'{prefix or 'root'}' is not a module (found {type(obj).__name__})")
    out: dict[str, torch.Tensor] = {}
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is not None and not (group == "_buffers" and name in skip):
                out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out
