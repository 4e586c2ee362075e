"""`imgembed serve`'s map and audit: /api/map computed in the background (202 with progress, then
the points), kept on disk for the next server and made anew when a duplicates action changes the
index; /api/audit finding a planted misfiled image, and saying why an unlabelled index has no
mislabels; both views driven in a real headless Chromium (the map drawn, zoomed at the cursor,
thumbnails, a click opening the image; the finding listed and opened)."""

import shutil
import threading
import time

import numpy as np
import pytest
from test_server import chrome, free_port, screenshot, wait_for

from conftest import CLASSES, SAMPLES, copy_classes

PLANTED = ("vehicles", "hummer_05.png", "fruit")  # moved from vehicles/ into fruit/
COPIED = ("fruit", "pear.png", "fish")  # an exact copy of it filed under fish/


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model):
    """The sample classes with one drawing misfiled and one filed twice, indexed."""
    from imgembed.api import LocalPool, index_folder

    base = tmp_path_factory.mktemp("mapped")
    root = copy_classes(base / "photos", *CLASSES)
    shutil.move(root / PLANTED[0] / PLANTED[1], root / PLANTED[2] / PLANTED[1])
    shutil.copyfile(SAMPLES / COPIED[0] / COPIED[1], root / COPIED[2] / f"copy_{COPIED[1]}")
    index_folder(root, base / "index", model, executor=LocalPool(workers=0))
    return root, base / "index"


def fresh_copy(index_dir, dest):
    """The index copied without its cached map, as though never mapped."""
    shutil.copytree(index_dir, dest, ignore=shutil.ignore_patterns("map.*.npz"))
    return dest


def client_of(index_dir, model, tmp_path):
    from imgembed.api import Searcher
    from imgembed.web.server import create_app

    return create_app(Searcher(index_dir, model), thumbnail_cache=tmp_path / "thumbs").test_client()


def until_done(client, url, timeout=120):
    """Ask again while the answer is 202; (every status seen, the last answer's JSON)."""
    statuses, deadline = [], time.time() + timeout
    while True:
        reply = client.get(url)
        statuses.append(reply.status_code)
        if reply.status_code != 202 or time.time() > deadline:
            return statuses, reply.get_json()
        body = reply.get_json()
        assert body["status"] == "computing" and {"stage", "done", "total"} <= set(body)
        time.sleep(0.1)


def test_map_computed_in_the_background_then_kept_for_the_next_server(collection, model, tmp_path):
    root, index_dir = collection
    index_dir = fresh_copy(index_dir, tmp_path / "index")
    client = client_of(index_dir, model, tmp_path)
    statuses, body = until_done(client, "/api/map")
    assert statuses[0] == 202 and statuses[-1] == 200, statuses
    n = body["count"]
    assert n == 81 and all(len(body[k]) == n for k in ("ids", "x", "y", "label", "root", "path"))
    assert body["labels"] == sorted(CLASSES) and body["roots"] == [str(root)]
    assert 0 <= min(body["x"]) and max(body["x"]) <= 1 and 0 <= min(body["y"]) and max(body["y"]) <= 1
    at = body["path"].index(f"{PLANTED[2]}/{PLANTED[1]}")
    assert body["labels"][body["label"][at]] == PLANTED[2]
    # a map worth looking at: most drawings lie nearest one of their own class
    xy = np.stack([body["x"], body["y"]], axis=1)
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(n) * 9
    same = np.mean(np.array(body["label"])[d.argmin(1)] == np.array(body["label"]))
    assert same > 0.6, same
    assert list(index_dir.glob(f"map.{body['key']}.npz"))
    # the next server reads it from the index: no 202, the same points
    statuses2, again = until_done(client_of(index_dir, model, tmp_path), "/api/map")
    assert statuses2 == [200] and again == body
    assert until_done(client, "/api/map")[0] == [200]  # and this one keeps it


def test_a_duplicates_action_makes_a_new_map(tmp_path, model):
    from imgembed.api import LocalPool, index_folder

    photos = copy_classes(tmp_path / "photos", "fruit", "fish")
    shutil.copyfile(SAMPLES / "fruit" / "pear.png", photos / "fish" / "pear.png")
    index_folder(photos, tmp_path / "index", model, executor=LocalPool(workers=0))
    client = client_of(tmp_path / "index", model, tmp_path)
    _, before = until_done(client, "/api/map")
    group = client.get("/api/duplicates?exact=1").get_json()["groups"][0]
    gone = next(im["id"] for im in group["images"] if im["id"] != group["keep"])
    reply = client.post("/api/duplicates/act", json={"op": "trash", "confirm": True,
                                                      "groups": [[im["id"] for im in group["images"]]]})
    assert reply.status_code == 200 and len(reply.get_json()["done"]) == 1
    statuses, after = until_done(client, "/api/map")
    assert statuses[0] == 202 and statuses[-1] == 200
    assert after["key"] != before["key"] and after["count"] == before["count"] - 1 and gone not in after["ids"]


def test_audit_finds_the_planted_misfiled_image_and_is_kept(collection, model, tmp_path):
    root, index_dir = collection
    client = client_of(index_dir, model, tmp_path)
    statuses, body = until_done(client, "/api/audit")
    assert statuses[0] == 202 and statuses[-1] == 200, statuses
    assert body["images"] == 81 and body["labelled"] and body["note"] is None
    mislabels = [f for f in body["findings"] if f["kind"] == "mislabel"]
    planted = str(root / PLANTED[2] / PLANTED[1])
    top = {f["path"]: f for f in mislabels[:3]}
    assert planted in top, [f["path"] for f in mislabels[:5]]
    found = top[planted]
    assert found["label"] == PLANTED[2] and found["suggested"] == PLANTED[0]
    assert found["thumbnail"] == f"api/thumbnail/{found['id']}"
    image = client.get(f"/api/image/0/{found['id']}").get_json()["image"]
    assert image["path"] == planted
    assert found["neighbours"] and all(n["id"] is not None for n in found["neighbours"])
    assert [f["score"] for f in mislabels] == sorted((f["score"] for f in mislabels), reverse=True)
    pairs = [{f["path"], f["other"]["path"]} for f in body["findings"] if f["kind"] == "duplicate"]
    assert {str(root / COPIED[0] / COPIED[1]), str(root / COPIED[2] / f"copy_{COPIED[1]}")} in pairs
    assert client.get(f"/api/thumbnail/{found['id']}?size=64").status_code == 200
    statuses, again = until_done(client, "/api/audit")  # kept: no second computation
    assert statuses == [200] and again == body


def test_audit_of_an_unlabelled_index_says_why_there_are_no_mislabels(tmp_path, model):
    from imgembed.api import LocalPool, index_folder

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(SAMPLES.glob("*/*.png"))[::5]:
        shutil.copyfile(path, flat / f"{path.parent.name}_{path.name}")
    index_folder(flat, tmp_path / "index", model, executor=LocalPool(workers=0))
    _, body = until_done(client_of(tmp_path / "index", model, tmp_path), "/api/audit")
    assert not body["labelled"] and "mislabels need labels" in body["note"] and "no labels" in body["note"]
    assert not [f for f in body["findings"] if f["kind"] == "mislabel"]


def test_map_refusals_say_what_to_do(tmp_path, model, monkeypatch, collection):
    from imgembed.api import LocalPool, index_folder
    from imgembed.collection import layout
    from imgembed.errors import ExtraMissingError

    (tmp_path / "empty").mkdir()
    index_folder(tmp_path / "empty", tmp_path / "index", model, executor=LocalPool(workers=0))
    empty = client_of(tmp_path / "index", model, tmp_path)
    for url in ("/api/map", "/api/audit"):
        reply = empty.get(url)
        assert reply.status_code == 400 and "the index is empty" in reply.get_json()["error"]
    client = client_of(fresh_copy(collection[1], tmp_path / "copy"), model, tmp_path)
    assert client.get("/api/map?index=3").status_code == 400

    def missing():
        raise ExtraMissingError(layout.EXTRA_NEEDED)
    monkeypatch.setattr(layout, "require", missing)
    reply = client.get("/api/map")
    assert reply.status_code == 501 and "pip install 'imgembed[map]'" in reply.get_json()["error"]


@pytest.fixture(scope="module")
def live(collection, model, tmp_path_factory):
    """The collection served by waitress in this process, its map not computed yet."""
    import waitress

    from imgembed.api import Searcher
    from imgembed.web.server import create_app

    base = tmp_path_factory.mktemp("live")
    index_dir = fresh_copy(collection[1], base / "index")
    app = create_app(Searcher(index_dir, model), thumbnail_cache=base / "thumbs")
    port = free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/", collection[0]
    server.close()


def test_map_and_audit_pages_in_a_real_browser(live, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    base, root = live
    planted = str(root / PLANTED[2] / PLANTED[1])
    browser = chrome()
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)
    try:
        browser.get(base)
        browser.find_element(By.ID, "nav-map").click()
        canvas = browser.find_element(By.ID, "m-canvas")
        wait_for(browser, lambda b: canvas.get_attribute("data-drawn") == "81")  # laid out, every point drawn
        assert canvas.get_attribute("data-total") == "81"
        wait_for(browser, lambda b: "mislabel (" in b.find_element(By.ID, "m-legend").text)  # findings ringed
        legend = browser.find_element(By.ID, "m-legend").text
        assert all(f"{c} (" in legend for c in CLASSES)
        assert browser.execute_script("return new Set(mapView.data.ids.map((_, i) => pointColour(i))).size") == len(CLASSES)
        screenshot(browser, tmp_path, "map")
        # zoom with the wheel at the planted drawing: it stays under the cursor, thumbnails appear
        at = lambda: browser.execute_script(
            "return mapView.screenOf(mapView.data.ids[mapView.data.path.indexOf(arguments[0])])",
            f"{PLANTED[2]}/{PLANTED[1]}")
        x, y = at()
        w, h = canvas.size["width"], canvas.size["height"]
        origin = ScrollOrigin.from_element(canvas, int(x - w / 2), int(y - h / 2))
        for _ in range(6):
            ActionChains(browser).scroll_from_origin(origin, 0, -300).perform()
        wait_for(browser, lambda b: float(canvas.get_attribute("data-scale")) > 4)
        x2, y2 = at()
        # (the cursor sits at a whole pixel, up to half a pixel off the point, that much times the zoom)
        assert abs(x2 - x) < 12 and abs(y2 - y) < 12, ((x, y), (x2, y2))
        assert int(canvas.get_attribute("data-drawn")) < 81
        # every point in view drawn as its thumbnail, once they are loaded
        wait_for(browser, lambda b: canvas.get_attribute("data-thumbs") == canvas.get_attribute("data-drawn"))
        screenshot(browser, tmp_path, "map-zoomed")
        # hover names it, a click opens it
        ActionChains(browser).move_to_element_with_offset(canvas, int(x2 - w / 2), int(y2 - h / 2)).perform()
        wait_for(browser, lambda b: planted in b.find_element(By.ID, "m-tip").text)
        ActionChains(browser).click().perform()
        wait_for(browser, lambda b: b.execute_script("return location.hash").startswith("#image/0/"))
        wait_for(browser, lambda b: css("#d-path") and b.find_element(By.ID, "d-path").text == planted)
        assert "predicted" in browser.find_element(By.ID, "d-facts").text
        browser.find_element(By.ID, "back").click()  # back to the map as it was left
        wait_for(browser, lambda b: not b.find_element(By.ID, "map").get_attribute("class"))
        assert float(canvas.get_attribute("data-scale")) > 4
        # the audit: the planted drawing among the first mislabels, suggested back where it came from
        browser.find_element(By.ID, "nav-audit").click()
        wait_for(browser, lambda b: len(css(".finding[data-kind=mislabel]")) >= 1)
        first = [f.get_attribute("data-path") for f in css(".finding[data-kind=mislabel]")[:3]]
        assert planted in first, first
        row = css(f'.finding[data-kind=mislabel][data-path="{planted}"]')[0]
        assert f"{PLANTED[2]} → {PLANTED[0]}" in row.find_element(By.CSS_SELECTOR, "figure figcaption").text
        assert len(row.find_elements(By.CSS_SELECTOR, "figure.small")) == 5
        assert css(".finding[data-kind=duplicate]")
        wait_for(browser, lambda b: b.execute_script(
            "return [...arguments[0].querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)", row))
        screenshot(browser, tmp_path, "audit")
        row.find_element(By.CSS_SELECTOR, "figure img").click()
        wait_for(browser, lambda b: css("#d-path") and b.find_element(By.ID, "d-path").text == planted)
    finally:
        browser.quit()
