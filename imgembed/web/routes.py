"""The routes and error handlers of `imgembed serve`: plain functions of the server's state
(:class:`~.state.ServerState`) and the request, listed in :data:`ROUTES` and :data:`ERRORS` for
:func:`~.server.create_app` to register. What they answer is described in :mod:`.server`."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from flask import jsonify, request, send_file

from ..api import act_on_duplicates, audit, exact_duplicates, find_duplicates, mapping, undo_duplicate_actions
from ..collection import knn, layout
from ..config import CLASSIFY_K, NEGATIVE_WEIGHT
from ..errors import ExtraMissingError, ImageLoadError, ImgembedError, IndexLockedError, InputError, NoLabelsError
from . import helpers as h
from .state import REFRESH, ServerState

# The page: one self-contained file (no external resources), read once.
PAGE = Path(__file__).with_name("page.html").read_text(encoding="utf-8")


def error(message: str, status: int):
    return jsonify({"error": message}), status


# --- error handlers ---

def too_large(state: ServerState, _):
    return error(f"upload larger than {state.max_upload_bytes // (1024 * 1024)} MB", 413)


def not_an_image(state: ServerState, e: ImageLoadError):
    return error(f"not a usable image: {e}", 400)


def bad_input(state: ServerState, e: InputError):
    return error(str(e), 400)


def not_found(state: ServerState, e: h.ImageNotFoundError):
    return error(str(e), 404)


def locked(state: ServerState, e: IndexLockedError):
    return error(str(e), 409)


def missing_extra(state: ServerState, e: ExtraMissingError):
    return error(str(e), 501)


def failed(state: ServerState, e: ImgembedError):
    return error(str(e), 500)


# --- the page and the collection ---

def page(state: ServerState):
    return PAGE


def info(state: ServerState):
    labels: dict[str, int] = {}
    folders = []
    for source, idx in enumerate(state.searcher.indexes):
        for label, n in idx.store.labels().items():
            labels[label or ""] = labels.get(label or "", 0) + n
        folders += [{"value": f"{source}:{root}:{sub}", "root": root, "folder": sub, "images": n}
                    for (root, sub), n in sorted(idx.store.folders().items())]
    model = state.searcher.index.manifest["model"]
    return jsonify({"images": len(state.searcher), "model": model, "labels": labels, "folders": folders,
                    "indexes": [str(idx.directory) for idx in state.searcher.indexes]})


def images(state: ServerState):
    offset = h.int_arg(request.args, "offset", 0, 0, 10 ** 12)
    limit = h.int_arg(request.args, "limit", 60, 1, h.PAGE_LIMIT)
    label = request.args.get("label")
    sources, root, sub = h.parse_folder(request.args.get("folder"), len(state.searcher.indexes))
    total, rows = h.page_across(state.stores, sources, offset, limit, label=label, root=root, folder=sub)
    return jsonify({"total": total, "offset": offset, "images": [h.describe(r, source) for source, r in rows]})


def image(state: ServerState, source: int, row_id: int):
    h.parse_source(source, len(state.searcher.indexes))
    k = h.int_arg(request.args, "k", 24, 1, 100)
    store = state.stores[source]
    row = store.rows_by_id([row_id]).get(row_id)
    if row is None:
        return error(f"no image with id {row_id} in index {source}", 404)
    vector = store.vectors_by_id([row_id])[row_id]
    hits = h.without_self(state.searcher.search_vectors(vector[None], k + 1)[0], source, row_id, k)
    predicted = h.top_vote(hits, state.labelled)
    return jsonify({"image": h.describe(row, source, mtime_ns=row.mtime_ns, hash=row.hash),
                    "predicted": h.predicted_json(predicted),
                    "neighbours": [h.hit_json(x) for x in hits]})


def thumbnail(state: ServerState, row_id: int):
    size = h.int_arg(request.args, "size", 256, 16, 1024)
    source = request.args.get("index", 0, type=int)
    count = len(state.searcher.indexes)
    if not 0 <= source < count:
        return error(f"no index {source} (serving {count})", 404)
    row = state.stores[source].rows_by_id([row_id]).get(row_id)
    if row is None:
        return error(f"no image with id {row_id} in this index", 404)
    try:
        data = state.thumbnails.get(row, size)
    except ImageLoadError as e:
        return error(f"{row.full_path}: {e}", 404)
    return send_file(io.BytesIO(data), mimetype="image/jpeg", max_age=3600)


# --- queries ---

def search(state: ServerState):
    searcher, count = state.searcher, len(state.searcher.indexes)
    k = h.int_arg(request.form, "k", 12, 1, 100)
    weight = h.float_arg(request.form, "weight", NEGATIVE_WEIGHT, 0.0, 2.0)
    uploads = [h.decode_upload(f, searcher.max_pixels) for f in request.files.getlist("image")]
    counter = [h.decode_upload(f, searcher.max_pixels) for f in request.files.getlist("negative")]
    positive = h.parse_refs("positive", request.form.getlist("positive"), count)
    negative = h.parse_refs("negative_id", request.form.getlist("negative_id"), count)
    if not uploads and not positive:
        raise ImageLoadError("no file in the 'image' field, and no positive example")
    up = searcher.embed(uploads) if uploads else None
    down = searcher.embed(counter) if counter else None
    stored, stored_neg = h.stored_vectors(state.stores, positive), h.stored_vectors(state.stores, negative)
    pos = [v for v in (up, stored) if v is not None]
    neg = [v for v in (down, stored_neg) if v is not None]
    hits = searcher.search_combined([], [], k, weight=weight, vectors=np.concatenate(pos),
                                    negative_vectors=np.concatenate(neg) if neg else None,
                                    exclude=positive + negative)
    vote = h.top_vote(hits, state.labelled)
    return jsonify({"results": [h.hit_json(x) for x in hits], "classification": h.predicted_json(vote)})


def classify(state: ServerState):
    files = request.files.getlist("image")
    if not files:
        raise ImageLoadError("no file in the 'image' field")
    image_, k = h.decode_upload(files[0], state.searcher.max_pixels), h.int_arg(request.form, "k", CLASSIFY_K, 1, 100)
    vector = state.searcher.embed([image_])
    try:
        if not state.labelled:
            raise NoLabelsError(f"{state.searcher.index.directory}: the index has no labels")
        hits = state.searcher.search_vectors(vector, k, expand=False)[0]  # classify votes with the raw vectors
    except NoLabelsError as e:
        return error(str(e), 400)
    return jsonify(h.vote_json(knn.vote([x.row.label for x in hits], [x.score for x in hits])))


# --- duplicates ---

def duplicates(state: ServerState):
    source = h.parse_source(request.args.get("index", 0), len(state.searcher.indexes))
    directory = state.searcher.indexes[source].directory
    groups = exact_duplicates(directory) if request.args.get("exact") in ("1", "true") else \
        find_duplicates(directory)
    return jsonify({"index": source, "groups": [h.group_json(g, source) for g in groups]})


def act(state: ServerState):
    body = request.get_json(silent=True) or {}
    if body.get("confirm") is not True:
        raise InputError("acting on duplicates needs \"confirm\": true")
    source = h.parse_source(body.get("index", 0), len(state.searcher.indexes))
    groups = h.duplicate_groups(state.stores[source], source, body.get("groups"))
    report = act_on_duplicates(state.searcher.indexes[source].directory, groups, str(body.get("op")),
                               move_to=body.get("move_to") or None)
    request.environ[REFRESH] = True  # the gate refreshes the indexes once this is answered
    return jsonify(report.to_dict())


def undo(state: ServerState):
    body = request.get_json(silent=True) or {}
    source = h.parse_source(body.get("index", 0), len(state.searcher.indexes))
    report = undo_duplicate_actions(state.searcher.indexes[source].directory)
    request.environ[REFRESH] = True
    return jsonify(report.to_dict())


# --- the map and the audit: computed in the background, polled (202) until done ---

def map_view(state: ServerState):
    source = h.parse_source(request.args.get("index", 0), len(state.searcher.indexes))
    idx = state.searcher.indexes[source]
    store, directory = idx.store, idx.directory
    n = store.count()
    if n == 0:
        raise InputError(f"{directory}: the index is empty: nothing to map")
    if n >= layout.MIN_TSNE:
        layout.require()  # at once, not after a 202

    def compute(job):
        return mapping.index_map(directory, progress=job.progress)

    key = mapping.map_key(idx)
    found, job = state.derived.get("map", source, key, compute, cached=lambda: mapping.cached_map_of(idx))
    if job is not None:
        return jsonify(job.to_dict()), 202
    generation = store.generation()  # labels and moves change the points' labels and paths, not the layout
    return jsonify(state.derived.memo(("map", source), (key, generation),
                              lambda: h.map_json(found, store.rows_by_id(found.ids.tolist()), source)))


def audit_view(state: ServerState):
    source = h.parse_source(request.args.get("index", 0), len(state.searcher.indexes))
    idx = state.searcher.indexes[source]
    store, directory = idx.store, idx.directory
    if store.count() == 0:
        raise InputError(f"{directory}: the index is empty: nothing to audit")

    def compute(job):
        return audit(directory, progress=lambda done, total: job.progress("neighbours", done, total))

    key = (store.generation(), store.id_summary())
    report, job = state.derived.get("audit", source, key, compute)
    if job is not None:
        return jsonify(job.to_dict()), 202

    def build():
        rows = store.rows_by_id(store.ids().tolist())
        return h.audit_json(report, {r.full_path: r for r in rows.values()}, source)
    return jsonify(state.derived.memo(("audit", source), key, build))


# (method, rule, view): each view is called with the state and the rule's variables
ROUTES = [
    ("GET", "/", page),
    ("GET", "/api/info", info),
    ("GET", "/api/images", images),
    ("GET", "/api/image/<int:source>/<int:row_id>", image),
    ("POST", "/api/search", search),
    ("POST", "/api/classify", classify),
    ("GET", "/api/thumbnail/<int:row_id>", thumbnail),
    ("GET", "/api/duplicates", duplicates),
    ("POST", "/api/duplicates/act", act),
    ("POST", "/api/duplicates/undo", undo),
    ("GET", "/api/map", map_view),
    ("GET", "/api/audit", audit_view),
]

# (HTTP status or exception class, handler): each handler is called with the state and the error
ERRORS = [
    (413, too_large),
    (ImageLoadError, not_an_image),
    (InputError, bad_input),
    (h.ImageNotFoundError, not_found),
    (IndexLockedError, locked),
    (ExtraMissingError, missing_extra),
    (ImgembedError, failed),
]
