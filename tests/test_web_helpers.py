"""The parts of `imgembed serve` on their own, without a model or a server: parameters, look-ups,
JSON shapes, thumbnails, the gate, and the routes over a fake searcher."""

import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from imgembed.api import Classification
from imgembed.collection import knn
from imgembed.errors import ImageLoadError, InputError
from imgembed.index import Hit
from imgembed.index.store import ImageRow
from imgembed.web import helpers as h
from imgembed.web.state import REFRESH, Gate, ServerState
from imgembed.web.thumbnails import Thumbnails


def row(i, label="cats", root="/photos", path=None, width=100, height=80, size=1000, mtime=0, hash_=None):
    return ImageRow(i, root, path or f"{label or ''}/{i}.png".lstrip("/"), label, size, mtime,
                    hash_ if hash_ is not None else f"{i:032x}", width, height)


class FakeStore:
    """A metadata store of some rows, with vectors, answering as MetadataStore does."""

    def __init__(self, rows, dim=4):
        self.rows = list(rows)
        self.vectors = {r.id: np.full(dim, r.id, np.float32) for r in self.rows}
        self.pages = []  # the (offset, limit) of every page asked for

    def page(self, offset, limit, *, label=None, root=None, folder=""):
        self.pages.append((offset, limit))
        match = [r for r in self.rows if (label is None or (r.label or "") == label) and root in (None, r.root)
                 and r.path.startswith(folder)]
        return len(match), match[offset:offset + limit]

    def rows_by_id(self, ids):
        return {r.id: r for r in self.rows if r.id in set(ids)}

    def vectors_by_id(self, ids):
        return {i: self.vectors[i] for i in ids if i in self.vectors}

    def labels(self):
        out = {}
        for r in self.rows:
            out[r.label] = out.get(r.label, 0) + 1
        return out

    def folders(self):
        out = {}
        for r in self.rows:
            key = (r.root, (r.label or "").split("/")[0])
            out[key] = out.get(key, 0) + 1
        return out


class FakeSearcher:
    def __init__(self, *stores):
        self.indexes = [SimpleNamespace(store=s, directory=f"/idx/{n}", manifest={"model": {"backbone": "fake"}})
                        for n, s in enumerate(stores)]
        self.refreshes = 0
        self.max_pixels = 10 ** 6

    @property
    def index(self):
        return self.indexes[0]

    def __len__(self):
        return sum(len(idx.store.rows) for idx in self.indexes)

    def refresh(self):
        self.refreshes += 1


def png(width=40, height=30) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


# --- parameters ---

def test_int_arg_clamps_and_falls_back_to_its_default():
    assert h.int_arg({"k": "7"}, "k", 5, 1, 100) == 7
    assert h.int_arg({"k": "1000"}, "k", 5, 1, 100) == 100
    assert h.int_arg({"k": "-3"}, "k", 5, 1, 100) == 1
    assert h.int_arg({}, "k", 5, 1, 100) == 5
    assert h.int_arg({"k": "many"}, "k", 5, 1, 100) == 5
    assert h.int_arg({"k": "2.5"}, "k", 5, 1, 100) == 5


def test_float_arg_clamps_and_refuses_what_is_no_number():
    assert h.float_arg({"weight": "0.5"}, "weight", 0.25, 0.0, 2.0) == 0.5
    assert h.float_arg({"weight": "9"}, "weight", 0.25, 0.0, 2.0) == 2.0
    assert h.float_arg({}, "weight", 0.25, 0.0, 2.0) == 0.25
    with pytest.raises(InputError, match="^weight must be a number$"):
        h.float_arg({"weight": "heavy"}, "weight", 0.25, 0.0, 2.0)


def test_parse_source_names_one_of_the_indexes():
    assert h.parse_source("1", 2) == 1 and h.parse_source(0, 1) == 0
    with pytest.raises(InputError, match=r"^no index 2 \(serving 2\)$"):
        h.parse_source("2", 2)
    with pytest.raises(InputError, match="^index must be a number, not 'x'$"):
        h.parse_source("x", 2)
    with pytest.raises(InputError, match="^index must be a number, not None$"):
        h.parse_source(None, 2)


def test_parse_refs_and_parse_folder():
    assert h.parse_refs("positive", ["0:12", "1:3"], 2) == [(0, 12), (1, 3)]
    assert h.parse_refs("positive", [], 2) == []
    with pytest.raises(InputError, match="^negative_id must be SOURCE:ID, not '0:x'$"):
        h.parse_refs("negative_id", ["0:x"], 2)
    with pytest.raises(InputError, match="no index 5"):
        h.parse_refs("positive", ["5:1"], 2)
    assert list(h.parse_folder(None, 3)[0]) == [0, 1, 2] and h.parse_folder("", 3)[1:] == (None, "")
    assert h.parse_folder("1:/mnt/c:/photos:birds", 2) == ([1], "/mnt/c:/photos", "birds")  # a root with a colon
    assert h.parse_folder("0:/photos:", 1) == ([0], "/photos", "")
    with pytest.raises(InputError, match="no index 7"):
        h.parse_folder("7:/x:y", 1)


def test_decode_upload():
    upload = SimpleNamespace(read=lambda: png(), filename="red.png")
    assert h.decode_upload(upload, 10 ** 6).size == (40, 30)
    with pytest.raises(ImageLoadError, match="^the upload empty.png is empty$"):
        h.decode_upload(SimpleNamespace(read=lambda: b"", filename="empty.png"), 10 ** 6)
    with pytest.raises(ImageLoadError, match="^the upload is empty$"):
        h.decode_upload(SimpleNamespace(read=lambda: b"", filename=""), 10 ** 6)
    with pytest.raises(ImageLoadError):
        h.decode_upload(SimpleNamespace(read=lambda: b"shopping list\n", filename="notes.jpg"), 10 ** 6)
    with pytest.raises(ImageLoadError):  # more pixels than allowed
        h.decode_upload(SimpleNamespace(read=lambda: png(), filename="red.png"), 100)


# --- look-ups ---

def test_page_across_takes_the_indexes_one_after_another():
    a, b = FakeStore(row(i) for i in range(1, 6)), FakeStore(row(i, root="/other") for i in range(1, 4))
    total, rows = h.page_across([a, b], [0, 1], 3, 4)
    assert total == 8 and [(s, r.id) for s, r in rows] == [(0, 4), (0, 5), (1, 1), (1, 2)]
    total, rows = h.page_across([a, b], [0, 1], 6, 60)
    assert total == 8 and [(s, r.id) for s, r in rows] == [(1, 2), (1, 3)]
    assert h.page_across([a, b], [0, 1], 100, 60) == (8, [])
    assert h.page_across([a, b], [1], 0, 2)[0] == 3  # one index only
    total, rows = h.page_across([a, b], [0, 1], 0, 5)
    assert len(rows) == 5 and b.pages[-1] == (0, 0)  # the page was full before the second index


def test_stored_vectors_in_order_or_not_found():
    a, b = FakeStore([row(1), row(2)]), FakeStore([row(7)])
    got = h.stored_vectors([a, b], [(1, 7), (0, 2)])
    assert got.shape == (2, 4) and got[:, 0].tolist() == [7.0, 2.0]
    assert h.stored_vectors([a, b], []) is None
    with pytest.raises(h.ImageNotFoundError, match="^no image with id 9 in index 1$"):
        h.stored_vectors([a, b], [(0, 1), (1, 9)])


def test_duplicate_groups_checks_what_the_page_sent():
    store = FakeStore([row(1, hash_="a" * 32), row(2, hash_="a" * 32), row(3, hash_="b" * 32)])
    groups = h.duplicate_groups(store, 0, [[1, 2], ["2", 3]])
    assert [[r.id for r in g.rows] for g in groups] == [[1, 2], [2, 3]]
    assert [g.exact for g in groups] == [True, False] and groups[0].scores == [1.0, 1.0]
    for bad in (None, [1, 2], [[1]], [[1, 2], []], "1,2"):
        with pytest.raises(InputError, match="groups must be a list of lists of at least two image ids"):
            h.duplicate_groups(store, 0, bad)
    with pytest.raises(h.ImageNotFoundError, match=r"no image with id 8 in index 0 \(the page is out of date"):
        h.duplicate_groups(store, 0, [[1, 8]])


def test_without_self_and_top_vote():
    hits = [Hit(1, 1.0, row(5)), Hit(2, 0.9, row(6, "dogs")), Hit(3, 0.8, row(5), source=1), Hit(4, 0.7, row(7))]
    near = h.without_self(hits, 0, 5, 2)
    assert [(x.rank, x.row.id, x.source) for x in near] == [(1, 6, 0), (2, 5, 1)]  # the same id elsewhere stays
    assert len(h.without_self(hits, 0, 5, 10)) == 3
    assert h.top_vote(hits, labelled=False) is None
    vote = h.top_vote(hits + [Hit(5, 0.6, row(8)), Hit(6, 0.99, row(9, "dogs"))], labelled=True)
    assert vote == knn.vote(["cats", "dogs", "cats", "cats", "cats"], [1.0, 0.9, 0.8, 0.7, 0.6])  # five voters


# --- JSON shapes ---

def test_describe_and_hit_json():
    r = row(4, "birds", width=64, height=48, size=321)
    assert h.describe(r, 0) == {"id": 4, "index": 0, "path": "/photos/birds/4.png", "label": "birds", "width": 64,
                                "height": 48, "bytes": 321, "thumbnail": "api/thumbnail/4"}
    assert h.describe(r, 2, score=0.5)["thumbnail"] == "api/thumbnail/4?index=2"
    assert h.describe(r, 2, score=0.5)["score"] == 0.5
    got = h.hit_json(Hit(3, 0.123456789, r, source=1))
    assert got["rank"] == 3 and got["score"] == 0.123457 and got["index"] == 1


def test_vote_json_is_the_classification_less_query_and_weights():
    vote = knn.vote(["cats", "dogs", "cats"], [0.9, 0.8, 0.3333333333])
    full = Classification("q.png", vote, []).to_dict()
    assert h.vote_json(vote) == {"label": "cats", "confidence": full["confidence"], "votes": {"cats": 2, "dogs": 1}}
    assert h.predicted_json(vote) == h.vote_json(vote)
    assert h.predicted_json(None) is None
    unlabelled = knn.vote([None, None], [0.9, 0.8])
    assert h.predicted_json(unlabelled) is None and h.vote_json(unlabelled)["label"] is None


def test_group_json_marks_the_copy_to_keep():
    small, large = row(1, width=10, height=10), row(2, width=100, height=100)
    group = h.DuplicateGroup([small, large], [1.0, 0.98765432], exact=False)
    got = h.group_json(group, 1)
    assert got["keep"] == 2 and got["exact"] is False
    assert [(im["id"], im["score"], im["index"]) for im in got["images"]] == [(1, 1.0, 1), (2, 0.987654, 1)]


# --- thumbnails ---

def test_thumbnails_are_cached_by_hash_and_size(tmp_path):
    (tmp_path / "photos").mkdir()
    source = tmp_path / "photos" / "red.png"
    source.write_bytes(png(400, 200))
    r = row(1, None, root=str(tmp_path / "photos"), path="red.png", hash_="ab" + "0" * 30)
    thumbs = Thumbnails(tmp_path / "cache")
    data = thumbs.get(r, 64)
    assert data[:2] == b"\xff\xd8" and Image.open(io.BytesIO(data)).size == (64, 32)
    assert thumbs.path(r, 64) == tmp_path / "cache" / "64" / "ab" / f"{r.hash}.jpg" and thumbs.path(r, 64).is_file()
    source.unlink()
    assert thumbs.get(r, 64) == data  # from the cache: the file is not read again
    with pytest.raises(ImageLoadError):
        thumbs.get(r, 128)  # another size is made from the file, which is gone
    assert Thumbnails(None).path(r, 64) is None and Thumbnails(tmp_path).path(row(2, hash_=""), 64) is None


def test_thumbnails_answer_when_the_cache_cannot_be_written(tmp_path):
    (tmp_path / "red.png").write_bytes(png())
    (tmp_path / "cache").write_text("a file where the folder should be")
    r = row(1, None, root=str(tmp_path), path="red.png")
    assert Thumbnails(tmp_path / "cache").get(r, 32)[:2] == b"\xff\xd8"
    assert Thumbnails(None).get(r, 32)[:2] == b"\xff\xd8"


# --- state ---

def test_the_gate_lets_a_refresh_in_only_alone():
    gate, order = Gate(), []
    inside, leave = threading.Event(), threading.Event()

    def request():
        with gate.shared():
            inside.set()
            leave.wait(10)
            order.append("request done")

    def refresh():
        inside.wait(10)
        with gate.exclusive():
            order.append("refresh")

    threads = [threading.Thread(target=request), threading.Thread(target=refresh)]
    for t in threads:
        t.start()
    inside.wait(10)
    time.sleep(0.1)
    assert order == []  # the refresh waits for the request in flight
    leave.set()
    for t in threads:
        t.join(10)
    assert order == ["request done", "refresh"]


def test_a_request_that_asks_for_it_refreshes_the_indexes_after_its_answer():
    searcher = FakeSearcher(FakeStore([row(1, None)]))
    state = ServerState(searcher, Thumbnails(None))
    assert state.labelled is False and state.stores == [searcher.indexes[0].store]

    def inner(environ, start_response):
        if environ.get("PATH_INFO") == "/act":
            environ[REFRESH] = True
            searcher.indexes[0].store.rows.append(row(2, "dogs"))
        return [b"ok"]

    app = state.gated(inner)
    assert app({"PATH_INFO": "/"}, None) == [b"ok"] and searcher.refreshes == 0
    environ = {"PATH_INFO": "/act"}
    assert app(environ, None) == [b"ok"] and searcher.refreshes == 1 and REFRESH not in environ
    assert state.labelled is True  # asked again after the refresh


# --- routes over a fake searcher ---

@pytest.fixture
def client():
    pytest.importorskip("flask")
    from imgembed.web.server import create_app

    first = FakeStore([row(1, "cats"), row(2, "cats"), row(3, "dogs")])
    second = FakeStore([row(1, "cats", root="/more"), row(2, None, root="/more", path="loose.png")])
    return create_app(FakeSearcher(first, second), max_upload_bytes=1024 * 1024).test_client()


def test_routes_info_and_images(client):
    info = client.get("/api/info").get_json()
    assert info["images"] == 5 and info["labels"] == {"cats": 3, "dogs": 1, "": 1}
    assert info["indexes"] == ["/idx/0", "/idx/1"] and info["model"] == {"backbone": "fake"}
    assert [f["value"] for f in info["folders"]] == ["0:/photos:cats", "0:/photos:dogs", "1:/more:", "1:/more:cats"]
    page = client.get("/api/images?offset=2&limit=2").get_json()
    assert page["total"] == 5 and page["offset"] == 2
    assert [(im["index"], im["id"]) for im in page["images"]] == [(0, 3), (1, 1)]
    assert page["images"][1]["thumbnail"] == "api/thumbnail/1?index=1"
    assert client.get("/api/images?folder=1:/more:cats").get_json()["total"] == 1
    assert client.get("/").status_code == 200 and b"<html" in client.get("/").data.lower()


def test_routes_turn_errors_into_one_line_answers(client):
    bad = client.get("/api/images?folder=9:/x:y")
    assert bad.status_code == 400 and bad.get_json() == {"error": "no index 9 (serving 2)"}
    assert client.get("/api/image/0/99").get_json() == {"error": "no image with id 99 in index 0"}
    assert client.get("/api/image/0/99").status_code == 404
    assert client.get("/api/thumbnail/1?index=4").status_code == 404
    gone = client.post("/api/search", data={"positive": "1:9"})
    assert gone.status_code == 404 and gone.get_json() == {"error": "no image with id 9 in index 1"}
    empty = client.post("/api/search", data={"image": (io.BytesIO(b""), "e.png")})
    assert empty.status_code == 400 and empty.get_json() == {"error": "not a usable image: the upload e.png is empty"}
    big = client.post("/api/search", data={"image": (io.BytesIO(b"\0" * (2 * 1024 * 1024)), "b.png")})
    assert big.status_code == 413 and big.get_json() == {"error": "upload larger than 1 MB"}
    refused = client.post("/api/duplicates/act", json={"groups": [[1, 2]]})
    assert refused.status_code == 400 and "confirm" in refused.get_json()["error"]
