"""End to end: the real `imgembed` command on real images, parsing its --json output."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from badfiles import EXPECTED, halves, make_bad_folder

from conftest import QUERIES, ROOT, SAMPLES, copy_classes, run_cli, run_json


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "index"
    report = run_json("index", SAMPLES, "--index", directory, "--workers", "1")
    return directory, report


def test_index_reports_counts_and_reindex_is_a_no_op(indexed):
    directory, report = indexed
    assert report["added"] == 80 and report["skipped"] == [] and report["total"] == 80
    assert set(report) >= {"index", "root", "added", "updated", "removed", "unchanged", "skipped",
                           "total", "elapsed_s", "images_per_s"}
    again = run_json("index", SAMPLES, "--index", directory)
    assert (again["added"], again["updated"], again["unchanged"], again["total"]) == (0, 0, 80, 80)


def test_search_classify_compare_info(indexed):
    directory, _ = indexed
    query = SAMPLES / "clocks" / "alarm_clock_mike_powers_.png"
    results = run_json("search", query, QUERIES / "vehicles_1989_chevrolet_celebrit_01.png",
                       "--index", directory, "-k", "3")
    assert [r["query"] for r in results] == [str(query), str(QUERIES / "vehicles_1989_chevrolet_celebrit_01.png")]
    first = results[0]["results"]
    assert [r["rank"] for r in first] == [1, 2, 3]
    assert set(first[0]) == {"rank", "path", "score", "label"}
    assert first[0]["path"] == str(query) and first[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert results[1]["results"][0]["label"] == "vehicles"

    votes = run_json("classify", *sorted(QUERIES.glob("*.png")), "--index", directory)
    assert all(set(v) >= {"query", "label", "confidence", "votes"} for v in votes)
    by_query = {os.path.basename(v["query"]).split("_")[0]: v for v in votes}
    # 4 of the 8 right with the embedding before bench/quality.py chose today's default, 5 with it
    assert by_query["vehicles"]["label"] == "vehicles"
    assert sum(v["label"] == name for name, v in by_query.items()) >= 5
    assert all(0 < v["confidence"] <= 1 and sum(v["votes"].values()) == 5 for v in votes)

    same = run_json("compare", query, query)
    assert same == {"a": str(query), "b": str(query), "score": pytest.approx(1.0, abs=1e-4)}
    pears = run_json("compare", SAMPLES / "fruit" / "pear.png", SAMPLES / "fruit" / "pear_simple.png")["score"]
    pear_car = run_json("compare", SAMPLES / "fruit" / "pear.png", SAMPLES / "vehicles" / "blazer_01.png")["score"]
    assert pears > pear_car

    info = run_json("info", "--index", directory)
    assert info["images"] == 80 and info["labels"]["birds"] == 10 and len(info["labels"]) == 8
    assert info["manifest"]["model"]["backbone"] == "efficientnet_lite0"

    table = run_cli("search", query, "--index", directory, "-k", "2").stdout.splitlines()
    assert table[0] == f"query: {query}" and table[1].split() == ["rank", "score", "label", "path"]
    assert table[2].split()[:3] == ["1", "1.0000", "clocks"]


def test_index_env_var(indexed):
    directory, _ = indexed
    info = run_json("info", env={"IMGEMBED_INDEX": str(directory)})
    assert info["images"] == 80


def test_errors_are_one_line_with_exit_codes(tmp_path, indexed):
    missing = run_cli("search", tmp_path / "nope.jpg", check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_flag = run_cli("search", SAMPLES / "fish" / "dolphin.png", "-k", "0", check=False)
    assert bad_flag.returncode == 2
    no_index = run_cli("search", SAMPLES / "fish" / "dolphin.png", "--index", tmp_path / "none", check=False)
    assert no_index.returncode == 1
    assert no_index.stderr.strip().count("\n") == 0 and "imgembed index FOLDER --index" in no_index.stderr
    traced = run_cli("--debug", "info", "--index", tmp_path / "none", check=False)
    assert traced.returncode == 1 and "Traceback" in traced.stderr
    directory, _ = indexed
    wrong_model = run_cli("search", SAMPLES / "fish" / "dolphin.png", "--index", directory,
                          "--model", "resnet18", "--weights", "none", check=False)
    assert wrong_model.returncode == 1 and "another model" in wrong_model.stderr


def test_unlabelled_index_says_so(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((SAMPLES / "fish").glob("*.png"))[:3]:
        shutil.copy(p, flat / p.name)
    run_cli("index", flat, "--index", tmp_path / "i", "-q")
    out = run_cli("classify", flat / sorted(os.listdir(flat))[0], "--index", tmp_path / "i", check=False)
    assert out.returncode == 1 and "no labels" in out.stderr


def test_changed_and_deleted_files_are_updated(tmp_path):
    folder = copy_classes(tmp_path / "photos", "fruit")
    index = tmp_path / "idx"
    assert run_json("index", folder, "--index", index)["added"] == 10
    (folder / "fruit" / "pear.png").unlink()
    shutil.copy(SAMPLES / "fish" / "dolphin.png", folder / "fruit" / "banana.png")  # content changed
    report = run_json("index", folder, "--index", index)
    assert (report["added"], report["updated"], report["removed"], report["unchanged"]) == (0, 1, 1, 8)
    hit = run_json("search", SAMPLES / "fish" / "dolphin.png", "--index", index, "-k", "1")[0]["results"][0]
    assert hit["path"] == str(folder / "fruit" / "banana.png") and hit["score"] > 0.999
    assert run_json("info", "--index", index)["images"] == 9


def test_bad_files_are_skipped_and_named_good_ones_searchable(tmp_path):
    folder = make_bad_folder(tmp_path / "mixed")
    index = tmp_path / "idx"
    report = run_json("index", folder, "--index", index)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    bad = {name for name, failure in EXPECTED.items() if failure}
    assert set(skipped) == bad
    for name in bad:
        assert EXPECTED[name] in skipped[name]
    assert report["total"] == len(EXPECTED) - len(bad)
    text = run_cli("index", folder, "--index", index).stdout  # second run: bad files still reported
    for name in bad:
        assert name in text
    good = sorted(folder / n for n, failure in EXPECTED.items() if not failure)
    results = run_json("search", *good, "--index", index, "-k", "1")
    assert [r["results"][0]["path"] for r in results] == [str(p) for p in good]
    upright = tmp_path / "upright.png"
    halves().rotate(-90, expand=True).save(upright)  # what rotated.jpg looks like when displayed
    hit = run_json("search", upright, "--index", index, "-k", "1")[0]["results"][0]
    assert hit["path"].endswith("rotated.jpg") and hit["score"] > 0.95
    info = run_json("info", "--index", index)
    assert {os.path.basename(s["path"]) for s in info["skipped"]} == bad


def test_checkpoint_model_is_remembered_by_the_index(tmp_path, torch_model):
    import torch

    from imgembed.model.network import EmbeddingModel, save_checkpoint

    torch.manual_seed(0)
    model = torch_model
    headed = EmbeddingModel(model.backbone_name, model.backbone, model.weights_id, model.preprocess,
                            {"type": "linear", "dim": 64})
    ckpt = tmp_path / "models" / "toy.pt"
    save_checkpoint(headed, ckpt, weights="imagenet", extra={"classes": ["fish"]})
    index = tmp_path / "idx"
    run_cli("index", SAMPLES / "fish", "--index", index, "--model", ckpt, "-q")
    info = run_json("info", "--index", index)
    assert info["manifest"]["model"]["dim"] == 64 and info["manifest"]["model"]["checkpoint"].startswith("sha256:")
    hit = run_json("search", SAMPLES / "fish" / "dolphin.png", "--index", index, "-k", "1")[0]["results"][0]
    assert hit["path"] == str(SAMPLES / "fish" / "dolphin.png")


def test_help_does_not_import_torch():
    code = ("import sys\nfrom imgembed.cli import main\n"
            "for args in (['--help'], ['index', '--help'], ['search', '--help'], ['classify', '--help'],"
            " ['compare', '--help'], ['info', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('LOADED' if {'torch', 'faiss', 'numpy'} & set(sys.modules) else 'CLEAN')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("CLEAN")


def test_an_unchanged_folder_is_indexed_without_torch_or_a_model(tmp_path):
    """A cron job or a file watcher re-indexing a folder where nothing changed pays for the walk,
    not for torch and a model; a changed file loads the index's own model (a checkpoint here
    would be found the same way, from the manifest), from the export cached by the first run,
    decoding in worker processes, and still without torch."""
    folder = copy_classes(tmp_path / "photos", "fruit") / "fruit"
    index = tmp_path / "idx"
    run_cli("index", folder, "--index", index, "-q")
    probe = ("import sys; from imgembed.cli import main\n"
             "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(('torch' if 'torch' in sys.modules else 'no torch') + ', '\n"
             "      + ('a model' if {'onnxruntime', 'openvino'} & set(sys.modules) else 'no model'))")
    out = subprocess.run([sys.executable, "-c", probe, "index", str(folder), "--index", str(index), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, check=True).stdout
    report, verdict = json.loads(out[:out.rindex("}") + 1]), out.strip().splitlines()[-1]
    assert (report["unchanged"], report["added"], verdict) == (10, 0, "no torch, no model")
    shutil.copy(SAMPLES / "fish" / "dolphin.png", folder / "dolphin.png")
    out = subprocess.run([sys.executable, "-c", probe, "index", str(folder), "--index", str(index), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, check=True).stdout
    report, verdict = json.loads(out[:out.rindex("}") + 1]), out.strip().splitlines()[-1]
    assert (report["added"], verdict) == (1, "no torch, a model")
    hit = run_json("search", SAMPLES / "fish" / "dolphin.png", "--index", index, "-k", "1")[0]["results"][0]
    assert hit["path"] == str(folder / "dolphin.png") and hit["score"] > 0.999
