"""The Ray engine: embedding as a Ray Data pipeline, for collections that outgrow one machine.

    file list -> read and decode tasks -> model actors (map_batches) -> the driver

The driver (the ``imgembed index`` process) plans the run and writes the index exactly as with
the local engine: it commits each batch to SQLite as it streams back, so a run that fails or is
killed keeps every committed batch, and a re-run embeds only what is missing. Only decoding and
the forward pass run on the cluster, through the same :func:`imgembed.inference.pool.decode` and
:func:`imgembed.model.network.embed_tensor` as the local engine, with the driver's model shipped through
the object store, so a file gets the same vector (and a bad file the same reason) from either.

Fault tolerance is Ray's: a decode task whose worker dies is retried, and a model actor that
dies is restarted and its batches re-run (``max_restarts=-1``, ``max_task_retries=-1``).

Every worker must reach the files under the same absolute paths (a shared file system) and
have imgembed installed. Ray is optional: ``pip install 'imgembed[ray]'``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..errors import EngineError
from ..imaging.decode import DEFAULT_DECODE_TIMEOUT
from .lifetime import Reaper
from .pool import EmbeddedBatch, FileInfo

if TYPE_CHECKING:
    from ..model.network import EmbeddingModel

# Without GPUs, one single-threaded model actor per CPU, and decode tasks beside them, each asking
# for half a CPU: as the local engine runs decode workers beside its model, every core holds a
# model and a decoder. Model actors also reserve memory (a Lite0 actor peaks at about 0.75 GB);
# that keeps Ray Data from fusing decoding into them (it fuses operators with equal resource
# asks), which would leave GPUs waiting on decoding.
DECODE_CPUS = 0.5
ACTOR_CPUS = 0.5
ACTOR_MEMORY = 1 << 30
INSTALL_HINT = "--engine ray needs Ray; install it with: pip install 'imgembed[ray]'"


def require():
    """The ``ray`` module, or :class:`EngineError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray core alone lacks the Data library)
    except ImportError:
        raise EngineError(INSTALL_HINT) from None
    return ray


class _Connection:
    """Use the Ray session this process already has; else join ``address`` or start a local
    cluster on this machine's cores. A session opened here is closed on exit: a joined cluster
    is left running (the driver only disconnects), a cluster started here is shut down, and
    dies with this process however it dies (a :class:`~imgembed.inference.lifetime.Reaper` kills what
    Ray's own fate-sharing leaves: its agents outlive a SIGKILLed driver by a minute)."""

    def __init__(self, address: str | None):
        self.ray = require()
        self.owned, self.reaper = False, None
        if self.ray.is_initialized():
            return
        self.owned = True
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs = dict(logging_level=logging.ERROR, log_to_driver=False)
        try:
            if address:
                self.ray.init(address=address, **kwargs)
            else:
                self.reaper = Reaper()
                self.ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            if self.reaper is not None:
                self.reaper.close(reap=True)
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise EngineError(f"cannot start or reach {where}: {detail}") from None

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
        if self.reaper is not None:
            self.reaper.close()


def _decode(batch: dict, preprocess, max_pixels: int, timeout: float) -> dict:
    """Read, decode and preprocess a batch of files (a Ray Data task)."""
    from .pool import decode

    transform, n = preprocess.to_array, len(batch["pos"])
    out = {"pos": batch["pos"], "pixels": np.zeros((n, 3, preprocess.crop, preprocess.crop), np.float32),
           "ok": np.zeros(n, bool), "width": np.zeros(n, np.int64), "height": np.zeros(n, np.int64),
           "hash": np.full(n, "", object), "phash": np.zeros(n, np.int64), "error": np.full(n, "", object)}
    for j, raw in enumerate(batch["path"]):
        pixels, info, error = decode(Path(os.fsdecode(bytes(raw))), transform, preprocess.min_side, max_pixels, timeout)
        if error is None:
            out["pixels"][j] = pixels
            out["ok"][j], out["width"][j], out["height"][j], out["hash"][j] = True, info.width, info.height, info.hash
            out["phash"][j] = info.phash
        else:
            out["error"][j] = error
    return out


class _Embed:
    """One model per actor: embeds the decoded rows of each batch (a Ray Data actor)."""

    def __init__(self, model_ref, threads: int):
        import ray
        import torch

        model = ray.get(model_ref[0])
        if torch.cuda.is_available():  # the actor was given a GPU
            model = model.to("cuda")
            if model.precision == "bf16" and not torch.cuda.is_bf16_supported():
                model.set_precision("fp32")  # pre-Ampere GPUs: bf16 would be emulated
        else:
            torch.set_num_threads(max(1, threads))
        self.model = model

    def __call__(self, batch: dict) -> dict:
        import torch

        from ..model.network import embed_tensor

        ok = batch["ok"].astype(bool)
        vectors = np.zeros((len(ok), self.model.dim), np.float32)
        if ok.any():
            vectors[ok] = embed_tensor(self.model, torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = vectors
        return out


@dataclass(frozen=True)
class RayCluster:
    """The Ray :class:`~imgembed.inference.Executor`: decode tasks and ``actors`` model replicas
    (None: one per GPU, else one per CPU) on the cluster at ``address`` (None: this process's Ray
    session, else a local cluster started for the run). Its actors run torch."""

    address: str | None = None
    actors: int | None = None
    runtime = "torch"

    def check(self) -> None:
        from ..model.backbones import require_torch

        require()  # fail before any work when Ray is not installed
        require_torch("--engine ray (its model actors run torch)")

    def embed_files(self, model: "EmbeddingModel", paths: Sequence[Path], *, batch_size: int = 32,
                    max_pixels: int, decode_timeout: float = DEFAULT_DECODE_TIMEOUT) -> Iterator[EmbeddedBatch]:
        return embed_files(model, paths, address=self.address, batch_size=batch_size, actors=self.actors,
                           max_pixels=max_pixels, decode_timeout=decode_timeout)


def embed_files(model: "EmbeddingModel", paths: Sequence[Path], *, address: str | None = None,
                batch_size: int = 32, actors: int | None = None, max_pixels: int,
                decode_timeout: float = DEFAULT_DECODE_TIMEOUT) -> Iterator[EmbeddedBatch]:
    """Embed ``paths`` on a Ray cluster, yielding :class:`EmbeddedBatch` es as they finish (in
    any order; positions index ``paths``). ``actors`` model replicas run at once (default: one
    per GPU of the cluster, else one per CPU)."""
    if not paths:
        return
    conn = _Connection(address)
    ray = conn.ray
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
        actors = actors or gpus or cpus
        # A CPU actor asks for half a CPU, or less where that would leave no room for a decode
        # task (more actors than that would otherwise stall the pipeline with no decoding).
        actor_cpus = 0 if gpus else min(ACTOR_CPUS, (cpus - DECODE_CPUS) / actors)
        if not gpus and actor_cpus < 0.1:
            raise EngineError(f"--ray-actors {actors} is too many for a cluster of {cpus} CPUs; "
                              f"use at most {int((cpus - DECODE_CPUS) / 0.1)}")
        items = [{"pos": i, "path": os.fsencode(p)} for i, p in enumerate(paths)]
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // batch_size))  # a task per batch
        ds = ds.map_batches(_decode, fn_args=(model.preprocess, max_pixels, decode_timeout),
                            batch_size=batch_size, batch_format="numpy", num_cpus=DECODE_CPUS)
        ds = ds.map_batches(_Embed, fn_constructor_args=([ray.put(model)], max(1, cpus // actors)),
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            num_gpus=1 if gpus else 0, num_cpus=actor_cpus, memory=ACTOR_MEMORY)
        try:
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=False):
                yield _to_embedded(batch, model.dim)
        except ray.exceptions.RayError as e:
            detail = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
            raise EngineError(f"the Ray pipeline failed ({type(e).__name__}: {detail}); "
                              "what was embedded is kept, re-run to finish") from None
    finally:
        conn.close()


def _to_embedded(batch: dict, dim: int) -> EmbeddedBatch:
    out = EmbeddedBatch(vectors=np.zeros((0, dim), np.float32))
    ok = batch["ok"].astype(bool)
    for pos, good, width, height, digest, phash, error in zip(batch["pos"], ok, batch["width"], batch["height"],
                                                              batch["hash"], batch["phash"], batch["error"]):
        if good:
            out.ok.append(int(pos))
            out.info.append(FileInfo(int(width), int(height), str(digest), int(phash)))
        else:
            out.failed.append((int(pos), str(error)))
    if ok.any():
        out.vectors = np.ascontiguousarray(batch["vector"][ok], np.float32)
    return out
