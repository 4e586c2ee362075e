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
- errors -> ``{"error": "one line"}`` with status 400 (bad input), 404 (no such image), 409 (the
  index is being written), 413 (too large)
"""

from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from flask import Flask, jsonify, request, send_file
from PIL import Image

from ..api import DuplicateGroup, Searcher, act_on_duplicates, exact_duplicates, find_duplicates, undo_duplicate_actions
from ..collection import knn, tidy
from ..config import NEGATIVE_WEIGHT
from ..errors import ImageLoadError, IndexLockedError, InputError, NoLabelsError
from ..imaging import formats
from ..imaging.decode import decode_image, read_image
from ..imaging.files import atomic_path, user_cache

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
PAGE_LIMIT = 200


class _NotFound(Exception):
    """An image named by the request is not in the index (404)."""


class _Gate:
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


class Thumbnails:
    """JPEG thumbnails of indexed images, cached on disk by content hash and size, so that a page
    of a 100,000-image collection costs file reads, not decodes, from its second visit on."""

    def __init__(self, folder: Path | None):
        self.folder = Path(folder) if folder is not None else None

    def get(self, row, size: int) -> bytes:
        cached = self.folder / str(size) / row.hash[:2] / f"{row.hash}.jpg" if self.folder and row.hash else None
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        img = read_image(Path(row.full_path), min_side=size).image
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cached, durable=False) as tmp:
                    tmp.write_bytes(data)
            except OSError:
                pass  # a read-only cache costs speed, never an answer
        return data


def create_app(searcher: Searcher, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               thumbnail_cache: Path | None = None) -> Flask:
    """The app over ``searcher``; ``thumbnail_cache`` (default: the user cache folder) keeps
    thumbnails between requests and runs."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    gate = _Gate()
    thumbs = Thumbnails(thumbnail_cache if thumbnail_cache is not None else user_cache("thumbnails"))
    def any_labels() -> bool:
        return any(label is not None for idx in searcher.indexes for label in idx.store.labels())

    labelled = any_labels()  # asked per query, changed only by a refresh

    def refresh() -> None:
        nonlocal labelled
        with gate.exclusive():
            searcher.refresh()
            labelled = any_labels()

    inner = app.wsgi_app

    def gated(environ, start_response):
        with gate.shared():
            response = inner(environ, start_response)  # every answer is built in memory
        if environ.pop("imgembed.refresh", False):  # a duplicates action changed an index
            refresh()
        return response

    app.wsgi_app = gated

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    def has_labels() -> bool:
        return labelled

    def describe(row, source: int, **extra) -> dict:
        return {"id": row.id, "index": source, "path": row.full_path, "label": row.label, "width": row.width,
                "height": row.height, "bytes": row.bytes,
                "thumbnail": f"api/thumbnail/{row.id}" + (f"?index={source}" if source else ""), **extra}

    def hit(h) -> dict:
        return describe(h.row, h.source, rank=h.rank, score=round(h.score, 6))

    def vote_dict(v) -> dict | None:
        return None if v is None or v.label is None else \
            {"label": v.label, "confidence": round(v.confidence, 6), "votes": v.votes}

    def decoded(file) -> Image.Image:
        data = file.read()
        if not data:
            raise ImageLoadError(f"the upload{' ' + file.filename if file.filename else ''} is empty")
        image, _, _ = decode_image(data, max_pixels=searcher.max_pixels,
                                   raw=formats.is_raw(Path(file.filename or "").suffix))
        return image

    def source_of(value) -> int:
        try:
            source = int(value)
        except (TypeError, ValueError):
            raise InputError(f"index must be a number, not {value!r}") from None
        if not 0 <= source < len(searcher.indexes):
            raise InputError(f"no index {source} (serving {len(searcher.indexes)})")
        return source

    def refs(field: str) -> list[tuple[int, int]]:
        out = []
        for value in request.form.getlist(field):
            source, _, row_id = value.partition(":")
            if not row_id.isdigit():
                raise InputError(f"{field} must be SOURCE:ID, not {value!r}")
            out.append((source_of(source), int(row_id)))
        return out

    def stored_vectors(pairs: list[tuple[int, int]]) -> np.ndarray | None:
        out = []
        for source, row_id in pairs:
            found = searcher.indexes[source].store.vectors_by_id([row_id])
            if row_id not in found:
                raise _NotFound(f"no image with id {row_id} in index {source}")
            out.append(found[row_id])
        return np.stack(out) if out else None

    def int_arg(args, name: str, default: int, lo: int, hi: int) -> int:
        try:
            return max(lo, min(hi, int(args.get(name, default))))
        except ValueError:
            return default

    @app.errorhandler(413)
    def too_large(_):
        return error(f"upload larger than {max_upload_bytes // (1024 * 1024)} MB", 413)

    @app.errorhandler(ImageLoadError)
    def not_an_image(e):
        return error(f"not a usable image: {e}", 400)

    @app.errorhandler(InputError)
    def bad_input(e):
        return error(str(e), 400)

    @app.errorhandler(_NotFound)
    def not_found(e):
        return error(str(e), 404)

    @app.errorhandler(IndexLockedError)
    def locked(e):
        return error(str(e), 409)

    @app.get("/")
    def page():
        return PAGE

    @app.get("/api/info")
    def info():
        labels: dict[str, int] = {}
        folders = []
        for source, idx in enumerate(searcher.indexes):
            for label, n in idx.store.labels().items():
                labels[label or ""] = labels.get(label or "", 0) + n
            folders += [{"value": f"{source}:{root}:{sub}", "root": root, "folder": sub, "images": n}
                        for (root, sub), n in sorted(idx.store.folders().items())]
        model = searcher.index.manifest["model"]
        return jsonify({"images": len(searcher), "model": model, "labels": labels, "folders": folders,
                        "indexes": [str(idx.directory) for idx in searcher.indexes]})

    @app.get("/api/images")
    def images():
        offset = int_arg(request.args, "offset", 0, 0, 10 ** 12)
        limit = int_arg(request.args, "limit", 60, 1, PAGE_LIMIT)
        label = request.args.get("label")
        sources, root, sub = range(len(searcher.indexes)), None, ""
        if request.args.get("folder"):
            source, _, rest = request.args["folder"].partition(":")
            root, _, sub = rest.rpartition(":")
            sources = [source_of(source)]
        out, total = [], 0
        for source in sources:  # the indexes one after another, each in path order
            n, rows = searcher.indexes[source].store.page(max(0, offset - total), limit - len(out), label=label,
                                                          root=root, folder=sub)
            out += [describe(r, source) for r in rows] if offset < total + n else []
            total += n
        return jsonify({"total": total, "offset": offset, "images": out})

    @app.get("/api/image/<int:source>/<int:row_id>")
    def image(source: int, row_id: int):
        source_of(source)
        k = int_arg(request.args, "k", 24, 1, 100)
        idx = searcher.indexes[source]
        row = idx.store.rows_by_id([row_id]).get(row_id)
        if row is None:
            return error(f"no image with id {row_id} in index {source}", 404)
        vector = idx.store.vectors_by_id([row_id])[row_id]
        hits = [replace(h, rank=rank) for rank, h in enumerate(
            (h for h in searcher.search_vectors(vector[None], k + 1)[0] if (h.source, h.row.id) != (source, row_id)),
            1)][:k]
        predicted = knn.vote([h.row.label for h in hits[:5]], [h.score for h in hits[:5]]) \
            if has_labels() else None
        return jsonify({"image": describe(row, source, mtime_ns=row.mtime_ns, hash=row.hash),
                        "predicted": vote_dict(predicted),
                        "neighbours": [hit(h) for h in hits]})

    @app.post("/api/search")
    def search():
        k = int_arg(request.form, "k", 12, 1, 100)
        try:
            weight = max(0.0, min(2.0, float(request.form.get("weight", NEGATIVE_WEIGHT))))
        except ValueError:
            raise InputError("weight must be a number") from None
        uploads = [decoded(f) for f in request.files.getlist("image")]
        counter = [decoded(f) for f in request.files.getlist("negative")]
        positive, negative = refs("positive"), refs("negative_id")
        if not uploads and not positive:
            raise ImageLoadError("no file in the 'image' field, and no positive example")
        up = searcher.embed(uploads) if uploads else None
        down = searcher.embed(counter) if counter else None
        stored, stored_neg = stored_vectors(positive), stored_vectors(negative)
        pos = [v for v in (up, stored) if v is not None]
        neg = [v for v in (down, stored_neg) if v is not None]
        hits = searcher.search_combined([], [], k, weight=weight, vectors=np.concatenate(pos),
                                        negative_vectors=np.concatenate(neg) if neg else None,
                                        exclude=positive + negative)
        vote = knn.vote([h.row.label for h in hits[:5]], [h.score for h in hits[:5]]) if has_labels() else None
        return jsonify({"results": [hit(h) for h in hits], "classification": vote_dict(vote)})

    @app.post("/api/classify")
    def classify():
        files = request.files.getlist("image")
        if not files:
            raise ImageLoadError("no file in the 'image' field")
        image_, k = decoded(files[0]), int_arg(request.form, "k", 5, 1, 100)
        vector = searcher.embed([image_])
        try:
            if not has_labels():
                raise NoLabelsError(f"{searcher.index.directory}: the index has no labels")
            hits = searcher.search_vectors(vector, k)[0]
        except NoLabelsError as e:
            return error(str(e), 400)
        v = knn.vote([h.row.label for h in hits], [h.score for h in hits])
        return jsonify({"label": v.label, "confidence": round(v.confidence, 6), "votes": v.votes})

    @app.get("/api/thumbnail/<int:row_id>")
    def thumbnail(row_id: int):
        size = int_arg(request.args, "size", 256, 16, 1024)
        source = request.args.get("index", 0, type=int)
        if not 0 <= source < len(searcher.indexes):
            return error(f"no index {source} (serving {len(searcher.indexes)})", 404)
        row = searcher.indexes[source].store.rows_by_id([row_id]).get(row_id)
        if row is None:
            return error(f"no image with id {row_id} in this index", 404)
        try:
            data = thumbs.get(row, size)
        except ImageLoadError as e:
            return error(f"{row.full_path}: {e}", 404)
        return send_file(io.BytesIO(data), mimetype="image/jpeg", max_age=3600)

    @app.get("/api/duplicates")
    def duplicates():
        source = source_of(request.args.get("index", 0))
        directory = searcher.indexes[source].directory
        groups = exact_duplicates(directory) if request.args.get("exact") in ("1", "true") else \
            find_duplicates(directory)
        out = []
        for g in groups:
            keeper = tidy.choose_keeper([tidy.Member.of(r) for r in g.rows])
            out.append({"exact": g.exact, "keep": keeper.id,
                        "images": [describe(r, source, score=round(s, 6)) for r, s in zip(g.rows, g.scores)]})
        return jsonify({"index": source, "groups": out})

    def _groups(source: int, id_groups) -> list[DuplicateGroup]:
        if not isinstance(id_groups, list) or not all(isinstance(g, list) and len(g) > 1 for g in id_groups):
            raise InputError("groups must be a list of lists of at least two image ids")
        store = searcher.indexes[source].store
        rows = store.rows_by_id([int(i) for g in id_groups for i in g])
        missing = [i for g in id_groups for i in g if int(i) not in rows]
        if missing:
            raise _NotFound(f"no image with id {missing[0]} in index {source} (the page is out of date: reload it)")
        return [DuplicateGroup([rows[int(i)] for i in g], [1.0] * len(g),
                               exact=len({(rows[int(i)].hash, rows[int(i)].bytes) for i in g}) == 1) for g in id_groups]

    @app.post("/api/duplicates/act")
    def act():
        body = request.get_json(silent=True) or {}
        if body.get("confirm") is not True:
            raise InputError("acting on duplicates needs \"confirm\": true")
        source = source_of(body.get("index", 0))
        groups = _groups(source, body.get("groups"))
        report = act_on_duplicates(searcher.indexes[source].directory, groups, str(body.get("op")),
                                   move_to=body.get("move_to") or None)
        request.environ["imgembed.refresh"] = True
        return jsonify(report.to_dict())

    @app.post("/api/duplicates/undo")
    def undo():
        body = request.get_json(silent=True) or {}
        source = source_of(body.get("index", 0))
        report = undo_duplicate_actions(searcher.indexes[source].directory)
        request.environ["imgembed.refresh"] = True
        return jsonify(report.to_dict())

    return app


# The page: one self-contained file (no external resources), read once.
PAGE = Path(__file__).with_name("page.html").read_text(encoding="utf-8")
