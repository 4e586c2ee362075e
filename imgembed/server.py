"""`imgembed serve`: a local web page and JSON API over one index (Flask).

The model and the index are loaded once, in a :class:`~imgembed.api.Searcher`. Only files that
are in the index are ever served (thumbnails by row id), uploads must decode as images within
the size and pixel limits, and the server binds to 127.0.0.1 unless told otherwise.

JSON API:

- ``POST /api/search`` (multipart field ``image``, optional form field ``k``, default 12) ->
  ``{"results": [{"rank", "id", "path", "label", "score"}], "classification": {"label",
  "confidence", "votes"} | null}``
- ``POST /api/classify`` (``image``, optional ``k``, default 5) -> ``{"label", "confidence", "votes"}``
- ``GET /api/thumbnail/<id>?size=256&index=N`` -> JPEG of an indexed image (``index``: which
  of several indexes served as one holds it, 0 by default; each result names its ``thumbnail``)
- ``GET /api/info`` -> the index's images, labels and model
- errors -> ``{"error": "one line"}`` with status 400 (not an image), 404 (no such id) or 413 (too large)
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

from flask import Flask, jsonify, request, send_file
from PIL import Image

from .api import Searcher
from .errors import ImageLoadError, NoLabelsError
from .images import decode_image, read_image

MAX_UPLOAD_BYTES = 25 * 1024 * 1024


def create_app(searcher: Searcher, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    lock = threading.Lock()  # one model and one SQLite connection: one request at a time
    has_labels = any(label is not None for idx in searcher.indexes for label in idx.store.labels())

    def error(message: str, status: int):
        return jsonify({"error": message}), status

    def uploaded_image() -> Image.Image:
        file = request.files.get("image")
        if file is None:
            raise ImageLoadError("no file in the 'image' field")
        data = file.read()
        if not data:
            raise ImageLoadError("the upload is empty")
        image, _, _ = decode_image(data, max_pixels=searcher.max_pixels)
        return image

    def k_from(default: int) -> int:
        try:
            return max(1, min(100, int(request.form.get("k", default))))
        except ValueError:
            return default

    @app.errorhandler(413)
    def too_large(_):
        return error(f"upload larger than {max_upload_bytes // (1024 * 1024)} MB", 413)

    @app.errorhandler(ImageLoadError)
    def not_an_image(e):
        return error(f"not a usable image: {e}", 400)

    @app.get("/")
    def page():
        return PAGE

    @app.get("/api/info")
    def info():
        labels: dict[str, int] = {}
        with lock:
            for idx in searcher.indexes:
                for label, n in idx.store.labels().items():
                    labels[label or ""] = labels.get(label or "", 0) + n
        return jsonify({"images": len(searcher), "model": searcher.index.manifest["model"], "labels": labels,
                        "indexes": [str(idx.directory) for idx in searcher.indexes]})

    @app.post("/api/search")
    def search():
        image, k = uploaded_image(), k_from(12)
        with lock:
            result = searcher.search([image], k)[0]
            vote = searcher.classify([image], 5)[0].vote if has_labels else None
        return jsonify({
            "results": [{"rank": h.rank, "id": h.row.id, "index": h.source, "path": h.row.full_path,
                         "label": h.row.label, "score": round(h.score, 6),
                         "thumbnail": f"api/thumbnail/{h.row.id}" + (f"?index={h.source}" if h.source else "")}
                        for h in result.hits],
            "classification": None if vote is None else
            {"label": vote.label, "confidence": round(vote.confidence, 6), "votes": vote.votes},
        })

    @app.post("/api/classify")
    def classify():
        image, k = uploaded_image(), k_from(5)
        with lock:
            try:
                vote = searcher.classify([image], k)[0].vote
            except NoLabelsError as e:
                return error(str(e), 400)
        return jsonify({"label": vote.label, "confidence": round(vote.confidence, 6), "votes": vote.votes})

    @app.get("/api/thumbnail/<int:row_id>")
    def thumbnail(row_id: int):
        size = max(16, min(1024, request.args.get("size", 256, type=int)))
        source = request.args.get("index", 0, type=int)
        if not 0 <= source < len(searcher.indexes):
            return error(f"no index {source} (serving {len(searcher.indexes)})", 404)
        with lock:
            row = searcher.indexes[source].store.rows_by_id([row_id]).get(row_id)
        if row is None:
            return error(f"no image with id {row_id} in this index", 404)
        try:
            img = read_image(Path(row.full_path), min_side=size).image
        except ImageLoadError as e:
            return error(f"{row.full_path}: {e}", 404)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        buf.seek(0)
        return send_file(buf, mimetype="image/jpeg", max_age=3600)

    return app


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>imgembed</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
#drop{border:2px dashed #999;border-radius:8px;padding:1.2em;text-align:center;background:#fff}
#drop.over{border-color:#3367d6;background:#eef3fd}
#status{margin:.8em 0;min-height:1.2em} #status.error{color:#b00020}
#query img{max-width:220px;max-height:220px;border:2px solid #3367d6;border-radius:6px}
#results{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure img{width:160px;height:160px;object-fit:contain;display:block;margin:auto}
figcaption{font-size:.78em;word-break:break-all;margin-top:4px}
.score{font-weight:600} .label{color:#3367d6}
</style></head><body>
<h1>imgembed</h1>
<div id="drop">Drop an image here, or <input type="file" id="file" accept="image/*"></div>
<div id="status"></div>
<div id="query"></div>
<h2 id="verdict"></h2>
<div id="results"></div>
<script>
const statusBox = document.getElementById("status");
function show(msg, isError) { statusBox.textContent = msg; statusBox.className = isError ? "error" : ""; }
function esc(s) { const d = document.createElement("div"); d.textContent = s == null ? "-" : s; return d.innerHTML; }
async function query(file) {
  document.getElementById("query").innerHTML = "";
  document.getElementById("results").innerHTML = "";
  document.getElementById("verdict").textContent = "";
  show("searching " + file.name + " ...");
  const form = new FormData(); form.append("image", file);
  let reply, body;
  try { reply = await fetch("api/search", {method: "POST", body: form}); body = await reply.json(); }
  catch (e) { show("the server did not answer: " + e, true); return; }
  if (!reply.ok) { show(body.error || ("error " + reply.status), true); return; }
  const img = document.createElement("img"); img.src = URL.createObjectURL(file);
  document.getElementById("query").appendChild(img);
  const c = body.classification;
  if (c) document.getElementById("verdict").textContent =
      "predicted: " + c.label + " (confidence " + c.confidence.toFixed(2) + ")";
  document.getElementById("results").innerHTML = body.results.map(r =>
    `<figure class="result" data-path="${esc(r.path)}"><img src="${esc(r.thumbnail)}" alt="">
     <figcaption>#${r.rank} <span class="score">${r.score.toFixed(4)}</span>
     <span class="label">${esc(r.label)}</span><br>${esc(r.path)}</figcaption></figure>`).join("");
  show(body.results.length + " results for " + file.name);
}
document.getElementById("file").addEventListener("change", e => { if (e.target.files[0]) query(e.target.files[0]); });
const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) query(e.dataTransfer.files[0]); });
</script></body></html>
"""
