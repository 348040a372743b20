"""Reading the tensors of a TorchScript archive without running any of it.

OpenAI's ``ViT-*.pt`` files are TorchScript archives: a zip holding ``<root>/data.pkl``
(the pickled module tree), ``<root>/data/<key>`` (raw storage bytes), ``<root>/code/``
(TorchScript source) and ``<root>/constants.pkl``. ``torch.jit.load`` would compile and
run that code, and ``torch.load(weights_only=True)`` refuses such archives outright, so
this module reads ``data.pkl`` with a restricted unpickler instead:

- ``__torch__.*`` classes (the scripted modules) become inert ``ScriptObject`` records
  that only keep their attribute dict; no constructor or method of theirs ever runs;
- tensors are rebuilt from the raw storage bytes by our own function;
- any other global (``os.system``, ``builtins.exec``, ...) is refused.

The code and constants are never read: the parameters all live in ``data.pkl``.
"""
from __future__ import annotations

import io
import logging
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from vqclip.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["is_torchscript_archive", "read_torchscript_tensors"]

# The typed-storage tags TorchScript writes in a tensor's persistent id, and their dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptObject:
    """An inert stand-in for one pickled TorchScript object (a module, usually).

    ``qualname`` is the TorchScript class name (``__torch__.model.CLIP``); ``state`` is the
    attribute dict the pickle gave it (parameters, buffers, submodules, flags).
    """

    qualname = "?"

    def __init__(self, *args: object) -> None:  # NEWOBJ / REDUCE: arguments are ignored
        self.state: dict = {}

    def __setstate__(self, state: object) -> None:  # BUILD: keep the dict, run nothing
        self.state = dict(state) if isinstance(state, dict) else {}


class _StorageTag:
    """What a ``torch.<X>Storage`` global unpickles to: only its dtype."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _identity(value: object, *_: object) -> object:
    # torch.jit._pickle.build_*list(x) and restore_type_tag(x, type) return x.
    return value


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl``, allowing only inert records, tensors and containers."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str, path: Path):
        super().__init__(io.BytesIO(data))
        self._zf, self._root, self._path = zf, root, path
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}  # key -> flat typed tensor over the bytes

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageTag(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch.jit._pickle" and (name.startswith("build_") or name == "restore_type_tag"):
            return _identity
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a TorchScript weights file")

    def persistent_load(self, pid: object) -> torch.Tensor:
        # ('storage', <torch.XStorage>, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageTag) and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        tag, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            name = f"{self._root}data/{key}"
            try:
                raw = bytearray(self._zf.read(name))
            except KeyError as e:
                raise pickle.UnpicklingError(f"storage record {name!r} is missing") from e
            itemsize = torch.empty((), dtype=tag.dtype).element_size()
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage {name!r} holds {len(raw)} bytes, expected {numel} x {itemsize}"
                )
            self._storages[key] = torch.frombuffer(raw, dtype=tag.dtype) if raw else torch.empty(0, dtype=tag.dtype)
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
        # as_strided checks that the view fits in the storage; a crafted size cannot read past it.
        try:
            return torch.as_strided(storage, tuple(size), tuple(stride), offset)
        except (RuntimeError, TypeError) as e:
            raise pickle.UnpicklingError(f"tensor view size={size} stride={stride} offset={offset} "
                                         f"does not fit its storage of {storage.numel()}") from e


def is_torchscript_archive(zf: zipfile.ZipFile) -> bool:
    """True when the zip holds exactly one ``<root>/constants.pkl`` (TorchScript's marker)."""
    return any(n.endswith("/constants.pkl") and n.count("/") == 1 for n in zf.namelist())


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors of a TorchScript archive, read without executing it.

    Returns ``{dotted.name: tensor}`` for every tensor attribute in the pickled module
    tree (parameters and buffers, as ``ScriptModule.state_dict()`` would name them),
    on CPU and in the stored dtype (OpenAI's files are float16). Non-tensor attributes
    (``training`` flags, ints) are skipped.

    Raises ``CheckpointError`` for a file that is not a TorchScript zip, a truncated one,
    or one whose pickle names any global other than inert TorchScript classes and
    tensor rebuilds (e.g. a planted ``os.system``): the payload is never called.

    Example::

        sd = read_torchscript_tensors("ViT-B-32.pt")  # {'visual.conv1.weight': (768, 3, 32, 32) f16, ...}
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            roots = sorted({n.split("/", 1)[0] + "/" for n in zf.namelist()
                            if n.endswith("/data.pkl") and n.count("/") == 1})
            if len(roots) != 1:
                raise CheckpointError(f"{path}: a TorchScript archive needs exactly one '<root>/data.pkl', "
                                      f"found {len(roots)}; is it another kind of zip?")
            root = roots[0]
            order = zf.read(root + "byteorder").decode() if root + "byteorder" in zf.namelist() else "little"
            if order != "little":
                raise CheckpointError(f"{path}: byte order {order!r} is not supported; re-save it on a "
                                      "little-endian machine")
            obj = _RestrictedUnpickler(zf.read(root + "data.pkl"), zf, root, path).load()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable TorchScript archive ({e}); is it truncated?") from e
    except (pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        # What a malformed or hostile pickle stream can raise; each means "not plain module state".
        raise CheckpointError(f"{path}: refused, its data.pkl is not plain module state ({e}); "
                              "only TorchScript modules holding tensors are read") from e
    if not isinstance(obj, ScriptObject):
        raise CheckpointError(f"{path}: the archive's root object is a {type(obj).__name__}, expected a "
                              "TorchScript module")
    tensors: dict[str, torch.Tensor] = {}
    _collect(obj, "", tensors, depth=0)
    log.debug("read %d tensors from TorchScript archive %s (root class %s)", len(tensors), path, obj.qualname)
    return tensors


def _collect(obj: ScriptObject, prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
    if depth > 64:  # a module tree this deep is a crafted cycle, not a model
        raise CheckpointError("TorchScript module tree nests deeper than 64 levels; refusing it")
    for name, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, ScriptObject):
            _collect(value, f"{prefix}{name}.", out, depth + 1)
