"""`imgembed serve`: the JSON API, and the page driven in a real headless Chromium."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import ROOT, SAMPLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(sample_index):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgembed", "serve", "--index", str(sample_index),
                             "--port", str(port), "--max-upload-mb", "1"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(base + "api/info", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode())
            time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


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
    assert set(body["results"][0]) == {"rank", "id", "index", "path", "label", "score", "thumbnail"}
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


def test_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chrome()
    try:
        browser.get(server)
        path = SAMPLES / "clocks" / "alarm_clock_mike_powers_.png"
        browser.find_element(By.ID, "file").send_keys(str(path))
        WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "figure.result")))
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.result")
        assert figures[0].get_attribute("data-path") == str(path) and len(figures) == 12
        assert "predicted: clocks" in browser.find_element(By.ID, "verdict").text
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(
            "return [...document.querySelectorAll('figure.result img')].every(i => i.complete && i.naturalWidth > 0)"))
        browser.save_screenshot(str(tmp_path / "results.png"))
        assert (tmp_path / "results.png").stat().st_size > 10_000
        notes = tmp_path / "notes.jpg"
        notes.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(notes))
        WebDriverWait(browser, 30).until(lambda b: "not a usable image" in b.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "status").get_attribute("class") == "error"
    finally:
        browser.quit()
