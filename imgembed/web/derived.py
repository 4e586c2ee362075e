"""What `imgembed serve` derives from a whole index and keeps: the map (a 2-D layout of the
vectors, :func:`~imgembed.api.mapping.index_map`) and the audit
(:func:`~imgembed.api.auditing.audit`). Either can take minutes on a large index, so each is
computed in a background thread, one at a time per index and kind, its progress recorded for the
page to poll; the result is kept until the index's rows change (the key a request computes from
the open index differs), and then computed again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImgembedError


@dataclass
class Job:
    """One computation in a background thread: its key, its latest progress, then its result or
    its error."""

    key: Hashable
    stage: str = "starting"
    done: int = 0
    total: int = 0
    result: Any = None
    error: ImgembedError | None = None
    finished: bool = False

    def progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, int(done), int(total)

    def to_dict(self) -> dict:
        return {"status": "computing", "stage": self.stage, "done": self.done, "total": self.total}


@dataclass
class Derived:
    """Results by (kind, source): the latest key's result, or the job computing it."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: dict = field(default_factory=dict)  # (kind, source) -> Job, the latest started
    _memos: dict = field(default_factory=dict)  # name -> (key, value)

    def get(self, kind: str, source: int, key: Hashable, compute: Callable[[Job], Any],
            cached: Callable[[], Any] | None = None) -> tuple[Any, Job | None]:
        """(result, None) where the result for ``key`` is at hand (kept, or ``cached()`` not
        None: read from a cache on disk); else (None, the job under way), ``compute(job)``
        started in a thread where none runs for this index and kind. A job for an earlier key
        that is still running is let finish first (one at a time), and reported. The error a
        finished job raised is raised here, once: the next request tries again."""
        with self._lock:
            job = self._jobs.get((kind, source))
            idle = job is None or (job.finished and job.key != key)
        if idle and cached is not None:
            found = cached()
            if found is not None:
                self.put(kind, source, key, found)
                return found, None
        with self._lock:
            job = self._jobs.get((kind, source))
            if job is not None and job.finished:
                if job.error is not None:
                    del self._jobs[(kind, source)]
                    if job.key == key:
                        raise job.error
                    job = None
                elif job.key == key:
                    return job.result, None
                else:
                    job = None
            if job is not None:  # running, for this key or an earlier one
                return None, job
            job = self._jobs[(kind, source)] = Job(key)
        threading.Thread(target=self._run, args=(job, compute), name=f"imgembed-{kind}-{source}", daemon=True).start()
        return None, job

    def put(self, kind: str, source: int, key: Hashable, result: Any) -> None:
        """Keep ``result`` for ``key`` as though a job had computed it (e.g. read from a cache)."""
        with self._lock:
            running = self._jobs.get((kind, source))
            if running is None or running.finished:
                self._jobs[(kind, source)] = Job(key, result=result, finished=True)

    def memo(self, name: Hashable, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()``, kept under ``name`` until it is asked for with another ``key`` (what the
        routes make of a result, e.g. its JSON, made once per state of the rows)."""
        with self._lock:
            kept = self._memos.get(name)
        if kept is not None and kept[0] == key:
            return kept[1]
        value = build()
        with self._lock:
            self._memos[name] = (key, value)
        return value

    @staticmethod
    def _run(job: Job, compute: Callable[[Job], Any]) -> None:
        try:
            job.result = compute(job)
        except ImgembedError as e:
            job.error = e
        except Exception as e:  # noqa: BLE001 - a bug or a failing disk: reported to the page, not lost in a thread
            job.error = ImgembedError(f"{type(e).__name__}: {e}")
        finally:
            job.finished = True
