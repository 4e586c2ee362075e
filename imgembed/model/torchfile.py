"""Reading the tensors of a file that ``torch.save`` wrote, without torch.

The packaged ImageNet weights are in torch's legacy format (before 1.6): five pickles in a
row (magic number, protocol version, system info, the object, the storage keys in order), then
each storage's raw bytes after an 8-byte element count. Newer files are zip archives: the object
pickled in ``<name>/data.pkl``, each storage in ``<name>/data/<key>``. In both, tensors are
pickled as calls of ``torch._utils._rebuild_tensor_v2`` over storages named by persistent ids.

The unpickler here resolves only the globals a state dict of tensors needs (ordered dicts,
storage types and the tensor rebuilders), so, as with ``torch.load(weights_only=True)``, no
code runs from the file. It returns numpy arrays, bit for bit torch's values.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


class _Storage:
    """A storage's elements, filled in once its bytes are read (legacy files list them last)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = np.dtype(dtype), numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A view of a storage; made an array once every storage is read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ModelError("a tensor refers to a storage the file does not hold")
        item = data.itemsize
        if self.size and (self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1) > data.size:
            raise ModelError("a tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride))
        return np.array(view)  # a copy: owns its memory, C-contiguous


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict, legacy: bool):
        super().__init__(file)
        self.storages, self.legacy = storages, legacy

    def find_class(self, module: str, name: str):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise ModelError(f"holds {module}.{name}, which is not a plain tensor or dict") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ModelError(f"unknown persistent id {pid!r:.60}")
        # legacy: (tag, type, key, location, numel, view_metadata); zip: (tag, type, key, location, numel)
        kind, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(kind, _StorageType):
            raise ModelError(f"unknown storage type {kind!r:.60}")
        if self.legacy and len(pid) > 5 and pid[5] is not None:
            raise ModelError("storage views (torch < 0.4 files) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(kind.dtype, numel)
        return self.storages[key]


def load(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in ``path`` as ``{name: array}``; anything but a dict of tensors (or one
    under ``"state_dict"``) is refused with a :class:`ModelError` naming the file."""
    path = Path(path)
    try:
        obj, storages = (_load_zip if zipfile.is_zipfile(path) else _load_legacy)(path)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, KeyError, struct.error, zipfile.BadZipFile) as e:
        raise ModelError(f"{path}: not a readable torch file ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state dict of tensors")
    try:
        return {str(k): v.array() for k, v in obj.items()}
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


def _load_legacy(path: Path):
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise ModelError("not a torch file (wrong magic number)")
        pickle.load(f)  # protocol version
        info = pickle.load(f)
        if not info.get("little_endian", True):
            raise ModelError("written on a big-endian machine")
        obj = _Unpickler(f, storages, legacy=True).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                raise ModelError(f"storage {key} is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return obj, storages


def _load_zip(path: Path):
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise ModelError("a zip file without data.pkl: not a torch file")
        prefix = pkl[: -len("data.pkl")]
        obj = _Unpickler(io.BytesIO(z.read(pkl)), storages, legacy=False).load()
        for key, storage in storages.items():
            raw = z.read(f"{prefix}data/{key}")
            if len(raw) < storage.numel * storage.dtype.itemsize:
                raise ModelError(f"storage {key} is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj, storages
