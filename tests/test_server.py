"""`imgembed serve`: the JSON API, a bounded load of concurrent clients, and the page driven in a
real headless Chromium (browse, an image and its neighbours, examples and counter-examples, a
duplicates action behind its confirmation, a bad upload)."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import QUERIES, ROOT, SAMPLES

sys.path.insert(0, str(ROOT / "bench"))
from serve_load import load, multipart  # noqa: E402  (the load test is the benchmark's, run shorter)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(index, cache):
    port = free_port()
    # stderr to a file, never a pipe nobody reads: a full pipe would block the server
    log = open(Path(cache).parent / f"serve-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "imgembed", "serve", "--index", str(index),
                             "--port", str(port), "--max-upload-mb", "1", "--thumbnail-cache", str(cache)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "api/info", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(Path(log.name).read_text())
            time.sleep(0.3)
    return proc, base


@pytest.fixture(scope="module")
def server(sample_index, tmp_path_factory):
    proc, base = serve(sample_index, tmp_path_factory.mktemp("thumbs"))
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def planted_server(tmp_path_factory, model):
    """A writable collection: two sample classes and an exact copy of one drawing in another folder."""
    from imgembed.api import LocalPool, index_folder

    top = tmp_path_factory.mktemp("planted")
    for cls in ("fruit", "fish"):
        shutil.copytree(SAMPLES / cls, top / "photos" / cls)
    (top / "photos" / "inbox").mkdir()
    shutil.copy(SAMPLES / "fruit" / "pear.png", top / "photos" / "inbox" / "pear.png")
    index_folder(top / "photos", top / "index", model, executor=LocalPool(workers=0))
    proc, base = serve(top / "index", top / "thumbs")
    yield base, top / "photos"
    proc.terminate()
    proc.wait(timeout=30)


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_json(url: str, body: dict):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post_form(url: str, fields):
    data, ctype = multipart(fields)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, {"Content-Type": ctype}), timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload(url: str, data: bytes, filename: str = "q.png", field: str = "image"):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_search_classify_thumbnails_and_refusals(server):
    path = SAMPLES / "fish" / "dolphin.png"
    status, body = upload(server + "api/search", path.read_bytes())
    assert status == 200 and body["results"][0]["path"] == str(path) and body["results"][0]["score"] > 0.999
    assert set(body["results"][0]) == {"rank", "id", "index", "path", "label", "score", "thumbnail", "width", "height", "bytes"}
    assert body["classification"]["label"] == "fish"
    status, body2 = upload(server + "api/classify", path.read_bytes())
    assert status == 200 and body2["label"] == "fish"
    with urllib.request.urlopen(server + f"api/thumbnail/{body['results'][0]['id']}?size=64") as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.read()[:2] == b"\xff\xd8"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(server + "api/thumbnail/999999")
    assert missing.value.code == 404 and "no image with id 999999" in json.loads(missing.value.read())["error"]
    status, bad = upload(server + "api/search", b"shopping list\n", "notes.jpg")
    assert status == 400 and bad["error"].startswith("not a usable image")
    status, big = upload(server + "api/search", b"\0" * (2 * 1024 * 1024))
    assert status == 413 and "larger than 1 MB" in big["error"]
    with pytest.raises(urllib.error.HTTPError) as other:
        urllib.request.urlopen(server + "../etc/passwd")
    assert other.value.code == 404


def test_api_browses_the_collection_in_pages_with_filters(server, sample_files):
    status, first = get(server + "api/images?offset=0&limit=30")
    assert status == 200 and first["total"] == len(sample_files) and len(first["images"]) == 30
    _, rest = get(server + "api/images?offset=30&limit=200")
    paths = [im["path"] for im in first["images"] + rest["images"]]
    assert paths == sorted(str(p) for p in sample_files)  # every image once, in path order
    _, fish = get(server + "api/images?label=fish&limit=200")
    assert fish["total"] == 10 and {im["label"] for im in fish["images"]} == {"fish"}
    _, info = get(server + "api/info")
    folder = next(f for f in info["folders"] if f["folder"] == "clocks")
    _, clocks = get(server + "api/images?folder=" + urllib.request.quote(folder["value"]))
    assert clocks["total"] == folder["images"] == 10 and all("/clocks/" in im["path"] for im in clocks["images"])
    assert get(server + "api/images?folder=7:/x:y")[0] == 400


def test_api_an_image_and_more_like_it(server):
    _, page = get(server + "api/images?label=fish&limit=1")
    one = page["images"][0]
    status, body = get(server + f"api/image/0/{one['id']}?k=8")
    assert status == 200 and body["image"]["path"] == one["path"] and body["image"]["mtime_ns"] > 0
    assert len(body["neighbours"]) == 8 and one["id"] not in [n["id"] for n in body["neighbours"]]
    assert [n["rank"] for n in body["neighbours"]] == list(range(1, 9))
    scores = [n["score"] for n in body["neighbours"]]  # cosines; ranked by the index's search expansion
    assert scores[0] == max(scores) and body["predicted"]["label"]  # whose nearest image keeps the first place
    assert get(server + "api/image/0/999999")[0] == 404


def test_api_examples_and_counter_examples(server):
    _, page = get(server + "api/images?label=vehicles&limit=10")
    cars = [im for im in page["images"]]
    a, b, c = cars[0], cars[1], cars[2]
    status, plain = post_form(server + "api/search", [("positive", "", f"0:{a['id']}"), ("k", "", "10")])
    assert status == 200 and a["path"] not in [r["path"] for r in plain["results"]]  # the example is left out
    status, both = post_form(server + "api/search", [("positive", "", f"0:{a['id']}"), ("positive", "", f"0:{b['id']}"),
                                                     ("negative_id", "", f"0:{c['id']}"), ("k", "", "10")])
    assert status == 200 and not {a["path"], b["path"], c["path"]} & {r["path"] for r in both["results"]}
    # with the counter-example, what resembles it scores lower than without
    status, base = post_form(server + "api/search", [("positive", "", f"0:{a['id']}"), ("positive", "", f"0:{b['id']}"),
                                                     ("k", "", "80")])
    without = {r["path"]: r["score"] for r in base["results"]}
    _, like_c = get(server + f"api/image/0/{c['id']}?k=3")
    close_to_c = [n["path"] for n in like_c["neighbours"] if n["path"] in without]
    status, pushed = post_form(server + "api/search", [("positive", "", f"0:{a['id']}"), ("positive", "", f"0:{b['id']}"),
                                                       ("negative_id", "", f"0:{c['id']}"), ("k", "", "80")])
    ranks = {r["path"]: r["rank"] for r in pushed["results"]}
    base_ranks = {r["path"]: r["rank"] for r in base["results"]}
    assert close_to_c and all(ranks[p] >= base_ranks[p] for p in close_to_c)
    status, upload = post_form(server + "api/search", [("image", "q.png", (QUERIES / "fish_altum_angelfish_01.png").read_bytes()),
                                                       ("negative", "n.png", (SAMPLES / "fish" / "dolphin.png").read_bytes())])
    assert status == 200 and str(SAMPLES / "fish" / "dolphin.png") not in [r["path"] for r in upload["results"][:3]]
    assert post_form(server + "api/search", [("negative_id", "", f"0:{c['id']}")])[0] == 400
    assert post_form(server + "api/search", [("positive", "", "0:999999")])[0] == 404


def test_twenty_concurrent_clients_get_no_errors(server):
    result = load(server, (QUERIES / "fish_altum_angelfish_01.png").read_bytes(), clients=20, seconds=4)
    assert result["errors"] == [] and all(result["latency"].values()), result["errors"][:3]
    p95 = {k: sorted(v)[int(0.95 * (len(v) - 1))] for k, v in result["latency"].items()}
    print(f"{result['requests']} requests, p95 latency (s): {p95}")  # reported, never asserted


def test_api_duplicates_act_behind_a_confirmation_and_undo(planted_server):
    base, photos = planted_server
    status, body = get(base + "api/duplicates?exact=1")
    assert status == 200 and len(body["groups"]) == 1
    group = body["groups"][0]
    keep = next(im for im in group["images"] if im["id"] == group["keep"])
    assert keep["path"] == str(photos / "fruit" / "pear.png")  # the older copy (same pixels and size)
    ids = [im["id"] for im in group["images"]]
    status, refused = post_json(base + "api/duplicates/act", {"op": "trash", "groups": [ids]})
    assert status == 400 and "confirm" in refused["error"] and (photos / "inbox" / "pear.png").is_file()
    status, done = post_json(base + "api/duplicates/act", {"op": "trash", "groups": [ids], "confirm": True})
    assert status == 200 and [a["path"] for a in done["done"]] == [str(photos / "inbox" / "pear.png")]
    assert (photos / ".imgembed-trash" / "inbox" / "pear.png").is_file()
    assert get(base + "api/duplicates?exact=1")[1]["groups"] == []
    assert str(photos / "inbox" / "pear.png") not in [im["path"] for im in get(base + "api/images?limit=200")[1]["images"]]
    status, undone = post_json(base + "api/duplicates/undo", {})
    assert status == 200 and len(undone["done"]) == 1 and (photos / "inbox" / "pear.png").is_file()
    assert len(get(base + "api/duplicates?exact=1")[1]["groups"]) == 1


def chrome():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium or chromedriver not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver))


def wait_for(browser, condition, timeout=60):
    """Until ``condition(browser)`` holds; an element the page replaced while the condition read
    it (a view rendered again when its data arrive) only means: look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def screenshot(browser, tmp_path, name):
    """Saved beside the test, or in $IMGEMBED_SCREENSHOTS to be looked at."""
    import os

    folder = Path(os.environ.get("IMGEMBED_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").stat().st_size > 10_000


def thumbnails_loaded(browser):
    return browser.execute_script("return [...document.querySelectorAll('section:not(.hidden) figure img')]"
                                  ".every(i => i.complete && i.naturalWidth > 0)")


def test_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser = chrome()
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    try:
        # browse: the collection as a grid, then one label
        browser.get(server)
        wait_for(browser, lambda b: len(css("#grid figure.tile")) == 60)
        assert "80 images" in browser.find_element(By.ID, "facts").text
        assert browser.find_element(By.ID, "count").text == "60 of 80 images"
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")  # the next page loads itself
        wait_for(browser, lambda b: len(css("#grid figure.tile")) == 80)
        assert browser.find_element(By.ID, "count").text == "80 of 80 images"
        wait_for(browser, thumbnails_loaded)
        screenshot(browser, tmp_path, "browse")
        browser.execute_script("const s = document.getElementById('label'); s.value = 'clocks'; s.dispatchEvent(new Event('change'))")
        wait_for(browser, lambda b: len(css("#grid figure.tile")) == 10)
        assert all("/clocks/" in f.get_attribute("data-path") for f in css("#grid figure.tile"))
        # open an image with the keyboard: its details and more like it
        first = css("#grid figure.tile")[0]
        opened = first.get_attribute("data-path")
        first.send_keys(Keys.ENTER)
        wait_for(browser, lambda b: len(css("#neighbours figure.neighbour")) == 24)
        assert browser.find_element(By.ID, "d-path").text == opened
        assert "k-NN of 5" in browser.find_element(By.ID, "d-predicted").text
        assert opened not in [f.get_attribute("data-path") for f in css("#neighbours figure")]
        wait_for(browser, thumbnails_loaded)
        screenshot(browser, tmp_path, "image")
        # that image as an example, one of its neighbours as a counter-example, then search
        browser.find_element(By.ID, "d-pos").click()
        counter = css("#neighbours figure.neighbour")[0]
        counter_path = counter.get_attribute("data-path")
        counter.find_element(By.CSS_SELECTOR, ".pick .neg").click()
        assert len(css("#chips .chip")) == 2 and len(css("#chips .chip.neg")) == 1
        browser.find_element(By.ID, "run").click()
        wait_for(browser, lambda b: len(css("#results figure.result")) == 24)
        results = [f.get_attribute("data-path") for f in css("#results figure.result")]
        assert opened not in results and counter_path not in results
        assert "1 example(s), 1 counter-example(s)" in browser.find_element(By.ID, "verdict").text
        wait_for(browser, thumbnails_loaded)
        screenshot(browser, tmp_path, "combined")
        # an upload starts a search by itself; a bad one says why
        browser.find_element(By.ID, "clear").click()
        path = SAMPLES / "clocks" / "alarm_clock_mike_powers_.png"
        browser.find_element(By.ID, "file").send_keys(str(path))
        wait_for(browser, lambda b: b.execute_script(
            "const f = document.querySelector('#results figure.result'); return f && f.dataset.path") == str(path))
        assert "predicted: clocks" in browser.find_element(By.ID, "verdict").text
        browser.find_element(By.ID, "clear").click()
        notes = tmp_path / "notes.jpg"
        notes.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(notes))
        wait_for(browser, lambda b: "not a usable image" in b.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
        # a phone-size window
        browser.set_window_size(400, 800)
        browser.get(server + "#browse")
        browser.refresh()
        wait_for(browser, lambda b: len(css("#grid figure.tile")) == 60)
        wait_for(browser, thumbnails_loaded)
        assert browser.execute_script("return Math.max(document.body.scrollWidth, document.documentElement.scrollWidth)"
                                      " <= document.documentElement.clientWidth"), "the page scrolls sideways"
        screenshot(browser, tmp_path, "phone")
    finally:
        browser.quit()


def test_duplicates_page_acts_after_confirmation(planted_server, tmp_path):
    from selenium.webdriver.common.by import By

    base, photos = planted_server
    browser = chrome()
    css = lambda sel: browser.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    try:
        browser.get(base + "#duplicates")
        browser.find_element(By.ID, "exact").click()
        browser.find_element(By.ID, "find-dupes").click()
        wait_for(browser, lambda b: len(css(".group")) == 1 and "same bytes" in css(".group h3")[0].text)
        assert css(".group figure.kept")[0].get_attribute("data-path") == str(photos / "fruit" / "pear.png")
        wait_for(browser, thumbnails_loaded)
        screenshot(browser, tmp_path, "duplicates")
        browser.find_element(By.ID, "apply").click()
        assert browser.find_element(By.ID, "confirm").get_attribute("open") is not None
        assert str(photos / "inbox" / "pear.png") in browser.find_element(By.ID, "confirm-list").text
        browser.find_element(By.ID, "confirm-cancel").click()
        wait_for(browser, lambda b: b.find_element(By.ID, "status").text == "nothing done")
        assert (photos / "inbox" / "pear.png").is_file()
        browser.find_element(By.ID, "apply").click()
        browser.find_element(By.ID, "confirm-ok").click()
        wait_for(browser, lambda b: "1 files done" in b.find_element(By.ID, "status").text)
        assert (photos / ".imgembed-trash" / "inbox" / "pear.png").is_file() and not (photos / "inbox" / "pear.png").exists()
        assert len(css(".group")) == 0
        browser.find_element(By.ID, "undo").click()
        wait_for(browser, lambda b: "1 actions undone" in b.find_element(By.ID, "status").text)
        assert (photos / "inbox" / "pear.png").is_file() and len(css(".group")) == 1
    finally:
        browser.quit()
