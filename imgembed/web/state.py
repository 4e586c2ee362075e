"""What every request of `imgembed serve` shares: the searcher, the gate that lets a refresh of the
indexes run alone, the thumbnails, and the options the app was made with."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..api import Searcher
from ..config import MAX_UPLOAD_MB
from .derived import Derived
from .thumbnails import Thumbnails

MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
REFRESH = "imgembed.refresh"  # set in a request's WSGI environ: refresh the indexes once it is answered

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class Gate:
    """Any number of requests at once, or one refresh of the indexes alone."""

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0

    @contextmanager
    def shared(self):
        with self._cond:
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:  # held throughout: no request enters meanwhile
            self._cond.wait_for(lambda: self._inside == 0)
            yield


def any_labels(searcher: Searcher) -> bool:
    return any(label is not None for idx in searcher.indexes for label in idx.store.labels())


@dataclass
class ServerState:
    """The searcher and what goes with it, handed to every route and error handler."""

    searcher: Searcher
    thumbnails: Thumbnails
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    gate: Gate = field(default_factory=Gate)
    derived: Derived = field(default_factory=Derived)  # the maps and audits, computed in the background
    labelled: bool = field(init=False)  # asked per query, changed only by a refresh

    def __post_init__(self):
        self.labelled = any_labels(self.searcher)

    @property
    def stores(self) -> list:
        """Each index's metadata store, by source."""
        return [idx.store for idx in self.searcher.indexes]

    def refresh(self) -> None:
        """Reopen the indexes once no request is in flight, holding new ones back meanwhile."""
        with self.gate.exclusive():
            self.searcher.refresh()
            self.labelled = any_labels(self.searcher)

    def gated(self, inner: WSGIApp) -> WSGIApp:
        """``inner`` run inside the gate, and followed by a refresh where a request asked for one
        (:data:`REFRESH` in its environ: a duplicates action changed an index)."""
        def app(environ, start_response):
            with self.gate.shared():
                response = inner(environ, start_response)  # every answer is built in memory
            if environ.pop(REFRESH, False):
                self.refresh()
            return response
        return app
