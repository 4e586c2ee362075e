"""Several indexes searched as one: the same answers as one index holding everything."""

import pytest

from conftest import CLASSES, QUERIES, SAMPLES, copy_classes, run_cli, run_json


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The sample classes split over two folders, indexed apart (a, b) and together (both)."""
    tmp = tmp_path_factory.mktemp("shards")
    for part, names in (("a", CLASSES[:3]), ("b", CLASSES[3:])):
        copy_classes(tmp / part, *names)
        run_cli("index", tmp / part, "--index", tmp / f"idx-{part}", "-q")
        run_cli("index", tmp / part, "--index", tmp / "idx-both", "-q")
    return tmp


def test_two_indexes_answer_as_one(shards):
    """By the raw vectors (search expansion weighs each index's own neighbourhoods, which differ
    between shards and the whole), and classify, which always votes with them."""
    queries = sorted(QUERIES.glob("*.png"))
    raw = ("--expansion", "none")
    apart = run_json("search", *queries, "--index", shards / "idx-a", "--index", shards / "idx-b", "-k", "7", *raw)
    together = run_json("search", *queries, "--index", shards / "idx-both", "-k", "7", *raw)
    for got, want in zip(apart, together):
        assert [(h["rank"], h["path"]) for h in got["results"]] == [(h["rank"], h["path"]) for h in want["results"]]
        assert [h["score"] for h in got["results"]] == pytest.approx([h["score"] for h in want["results"]], abs=1e-5)
    votes = run_json("classify", *queries, "--index", shards / "idx-a", "--index", shards / "idx-b")
    assert [v["label"] for v in votes] == [v["label"] for v in run_json("classify", *queries, "--index",
                                                                         shards / "idx-both")]


def test_an_image_in_two_indexes_is_listed_once(shards):
    query = QUERIES / "fish_altum_angelfish_01.png"
    hits = run_json("search", query, "--index", shards / "idx-a", "--index", shards / "idx-both", "-k", "20")
    paths = [h["path"] for h in hits[0]["results"]]
    assert len(paths) == len(set(paths)) == 20


def test_indexes_of_another_model_are_refused_by_name(shards, tmp_path, torch_model):
    import torch

    from imgembed.model.network import EmbeddingModel, save_checkpoint

    torch.manual_seed(0)
    m = torch_model
    save_checkpoint(EmbeddingModel(m.backbone_name, m.backbone, m.weights_id, m.preprocess, {"type": "linear", "dim": 64},
                                   pooling=m.pooling), tmp_path / "toy.pt", weights="imagenet")
    run_cli("index", SAMPLES / "fruit", "--index", tmp_path / "other", "--model", tmp_path / "toy.pt", "-q")
    proc = run_cli("search", QUERIES / "fish_altum_angelfish_01.png", "--index", shards / "idx-a",
                   "--index", tmp_path / "other", check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "other") in proc.stderr and "must share one" in proc.stderr


def test_serve_answers_from_several_indexes(shards):
    """`serve --index a --index b`: one collection to the page and the API; each hit's thumbnail
    is fetched from the index that holds it."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    from test_server import free_port, upload

    from conftest import ROOT

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "imgembed", "serve", "--index", str(shards / "idx-a"),
                             "--index", str(shards / "idx-b"), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            try:
                info = json.loads(urllib.request.urlopen(base + "api/info", timeout=2).read())
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
                time.sleep(0.3)
        assert info["images"] == 80 and len(info["indexes"]) == 2 and len(info["labels"]) == 8
        status, body = upload(base + "api/search", (QUERIES / "fish_altum_angelfish_01.png").read_bytes())
        assert status == 200
        assert {r["index"] for r in body["results"]} == {0, 1}  # 12 hits from both halves of the classes
        for r in body["results"]:
            with urllib.request.urlopen(base + r["thumbnail"], timeout=30) as resp:
                assert resp.headers["Content-Type"] == "image/jpeg"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
