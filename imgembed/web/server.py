"""`imgembed serve`: the collection in a browser, and a JSON API over it (Flask, served by waitress).

The model and the indexes are loaded once, in a :class:`~imgembed.api.Searcher`. Requests run on
several threads at once: the model (ONNX Runtime, or torch) embeds uploads concurrently, FAISS
searches run concurrently, and each index's SQLite connection is used by one thread at a time
(the store's own lock, held for a query). Only a refresh of the indexes after a duplicates
action waits for the requests in flight, and they for it. Only files that are in the index are ever served (thumbnails by row id, cached
on disk by content hash and size), uploads must decode as images within the size and pixel
limits, and the server binds to 127.0.0.1 unless told otherwise.

JSON API (``source`` is which of several ``--index`` holds an image, 0 for the first):

- ``GET /api/info`` -> images, labels with counts, folders, model, indexes
- ``GET /api/images?offset=0&limit=60&label=L&folder=SOURCE:ROOT:SUB`` -> ``{"total", "images": [image]}``
  in path order; ``label=`` (empty) is the unlabelled images
- ``GET /api/image/<source>/<id>?k=24`` -> ``{"image": image + mtime, "predicted": vote | null,
  "neighbours": [image + rank, score]}``: more like this, from the stored vector
- ``POST /api/search``: examples as multipart files ``image`` (repeatable) and indexed images
  ``positive=SOURCE:ID`` (repeatable), counter-examples as files ``negative`` and fields
  ``negative_id=SOURCE:ID``, optional ``k`` (12) and ``weight`` (0.25): one query combined by
  :func:`imgembed.collection.knn.combine`, indexed examples left out of the results -> ``{"results":
  [image + rank, score], "classification": vote | null}``
- ``POST /api/classify`` (``image``, optional ``k``, default 5) -> ``{"label", "confidence", "votes"}``
- ``GET /api/thumbnail/<id>?size=256&index=SOURCE`` -> JPEG of an indexed image
- ``GET /api/duplicates?index=SOURCE&exact=1`` -> ``{"groups": [{"exact", "keep": id, "images":
  [image + score]}]}``, the copy to keep chosen by :func:`imgembed.collection.tidy.choose_keeper`
- ``POST /api/duplicates/act`` JSON ``{"index", "op": "trash"|"move"|"link", "move_to", "groups":
  [[id, ...], ...], "confirm": true}`` -> :meth:`ActionReport.to_dict`; ``POST
  /api/duplicates/undo`` JSON ``{"index"}`` -> the same for the undo
- ``GET /api/map?index=SOURCE`` -> the map (:func:`imgembed.api.mapping.index_map`) as parallel
  arrays, :func:`.helpers.map_json`: ``{"key", "count", "ids", "x", "y", "label", "labels",
  "root", "roots", "path"}``; where it is not cached yet, ``202 {"status": "computing", "stage",
  "done", "total"}`` while a background thread computes it (one per index; ask again to follow
  it). A change to the index's rows (a duplicates action) makes a new key, and a new map
- ``GET /api/audit?index=SOURCE`` -> the audit (:func:`imgembed.api.auditing.audit`,
  :func:`.helpers.audit_json`): ``{"images", "labelled", "note", "counts", "thresholds",
  "findings": [{"kind", "path", "label", "suggested", "score", "id", "thumbnail", "neighbours":
  [...], "other"?}]}``, ranked within each kind; ``note`` says why an index without two labels
  has no mislabels. Computed in the background like the map (202 meanwhile), kept until the
  rows change
- errors -> ``{"error": "one line"}`` with status 400 (bad input, an empty index), 404 (no such
  image), 409 (the index is being written), 413 (too large), 501 (the map needs the ``map``
  extra: ``pip install 'imgembed[map]'``), 500 (a background computation failed)

The app is put together here; the routes and error handlers are in :mod:`.routes`, what they
share in :mod:`.state` (the background maps and audits in :mod:`.derived`), what they are made of (parameters, look-ups, JSON shapes) in
:mod:`.helpers`, the thumbnails in :mod:`.thumbnails`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from flask import Flask

from ..api import Searcher
from ..imaging.files import user_cache
from .helpers import PAGE_LIMIT
from .routes import ERRORS, ROUTES
from .state import MAX_UPLOAD_BYTES, ServerState
from .thumbnails import Thumbnails

__all__ = ["MAX_UPLOAD_BYTES", "PAGE_LIMIT", "Thumbnails", "create_app"]


def create_app(searcher: Searcher, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               thumbnail_cache: Path | None = None) -> Flask:
    """The app over ``searcher``; ``thumbnail_cache`` (default: the user cache folder) keeps
    thumbnails between requests and runs."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    thumbnails = Thumbnails(thumbnail_cache if thumbnail_cache is not None else user_cache("thumbnails"))
    state = ServerState(searcher, thumbnails, max_upload_bytes)
    app.wsgi_app = state.gated(app.wsgi_app)
    for status_or_error, handler in ERRORS:
        app.register_error_handler(status_or_error, partial(handler, state))
    for method, rule, view in ROUTES:
        app.add_url_rule(rule, view.__name__, partial(view, state), methods=[method])
    return app
