"""Approximate indexes measure their Recall@10 on their own vectors, tune their search parameters
to the target, and say so when they cannot reach it; the promise holds for queries they never saw."""

import numpy as np
import pytest

from imgembed.index import ImageIndex, recall
from imgembed.index.store import NewImage

from conftest import run_cli, run_json

DIM = 32


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _collection(kind: str, n: int, rng) -> np.ndarray:
    """Four neighbourhood structures: none, well separated, crowded (power-law sizes), mixed."""
    def clusters(m, noise, zipf=None):
        centres = _unit(rng.standard_normal((300, DIM)))
        p = None
        if zipf:
            p = 1.0 / np.arange(1, 301) ** zipf
            p /= p.sum()
        return _unit(centres[rng.choice(300, m, p=p)] + noise * rng.standard_normal((m, DIM)) / np.sqrt(DIM))

    if kind == "uniform":
        return _unit(rng.standard_normal((n, DIM)))
    if kind == "tight":
        return clusters(n, 0.3)
    if kind == "crowded":
        return clusters(n, 0.8, zipf=1.1)
    return np.concatenate([_unit(rng.standard_normal((n // 2, DIM))), clusters(n - n // 2, 0.3)])


def _build(directory, vectors, index_type, target=None):
    identity = {"backbone": "synthetic", "weights": "none", "head": None, "checkpoint": None, "dim": DIM,
                "preprocess": {"resize": 1, "crop": 1, "mean": [0, 0, 0], "std": [1, 1, 1]}}
    with ImageIndex.open_for_write(directory, identity, {}, index_type, target_recall=target) as idx:
        idx.commit(add=[NewImage("/s", str(i), None, 0, 0, "", 1, 1, v) for i, v in enumerate(vectors)])
        idx.save()


def _held_out_recall(directory, base, queries) -> float:
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :10]
    with ImageIndex.open(directory) as idx:
        got = [[int(h.row.path) for h in hits] for hits in idx.search(queries, 10)]
    return sum(len(set(a) & set(b)) for a, b in zip(got, truth)) / truth.size


@pytest.mark.parametrize("kind", ["uniform", "tight", "crowded", "mixture"])
@pytest.mark.parametrize("index_type", ["hnsw", "ivfpq"])
def test_the_target_holds_or_the_index_says_why(tmp_path, kind, index_type):
    rng = np.random.default_rng(1)
    vectors = _collection(kind, 12_500, rng)
    base, queries = vectors[:12_000], vectors[12_000:]
    _build(tmp_path / "i", base, index_type)
    with ImageIndex.open(tmp_path / "i") as idx:
        check = idx.recall_check
        assert idx.manifest["faiss"]["params"] == check.params  # readers search with the tuned setting
    assert check is not None and check.n == 12_000 and check.queries == recall.SAMPLE and check.target == 0.95
    if check.met:
        assert check.recall >= 0.95 and check.ms_per_query <= check.budget_ms and not check.note
        # queries the tuning never saw, through the search users run (sampling error about 0.01)
        assert _held_out_recall(tmp_path / "i", base, queries) >= 0.94
    else:
        assert check.note  # and `info` prints it


def test_a_stricter_target_raises_the_setting_and_info_shows_it(tmp_path):
    rng = np.random.default_rng(2)
    vectors = _collection("crowded", 8_000, rng)
    _build(tmp_path / "i", vectors, "ivfpq")
    before = ImageIndex.open(tmp_path / "i")
    loose = before.recall_check
    before.close()
    report = run_json("rebuild", "--index", tmp_path / "i", "--target-recall", "0.99")
    strict = recall.RecallCheck.from_dict(report["recall"])
    assert strict.target == 0.99 and strict.params != loose.params and strict.recall > loose.recall
    assert strict.met == (strict.recall >= 0.99)
    out = run_cli("info", "--index", tmp_path / "i").stdout
    line = next(x for x in out.splitlines() if x.startswith("recall:"))
    assert "Recall@10" in line and "target 0.99" in line and ("target met" in line or "NOT met" in line)
    # the target is the index's own from now on: a later rebuild keeps it
    assert run_json("rebuild", "--index", tmp_path / "i")["recall"]["target"] == 0.99


def test_an_exact_index_has_no_recall_to_check(sample_index):
    info = run_json("info", "--index", sample_index)
    assert "recall" not in info["manifest"]
    assert "exact search" in run_cli("info", "--index", sample_index).stdout


def test_a_target_out_of_reach_is_reported_with_its_reason(monkeypatch):
    """Codes too coarse for the target, or a budget no setting fits: the check says which, and
    keeps the best setting it found."""
    import faiss

    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal((3000, DIM)))
    ids = np.arange(0, 3000, 10)
    truth, exact_ms = recall.exact_neighbours(base[ids], ids, [(np.arange(3000), base)])

    def index(factory):
        ix = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
        ix.train(base)
        ix.add_with_ids(base, np.arange(3000, dtype=np.int64))
        return ix

    coarse = recall.tune(index("IDMap2,IVF16,PQ4x4fs"), "IDMap2,IVF16,PQ4x4fs", base[ids], ids, truth, exact_ms, 3000)
    assert not coarse.met and coarse.recall < 0.95 and "stops rising" in coarse.note
    assert coarse.params.startswith("nprobe=")

    monkeypatch.setattr(recall, "BUDGET_FLOOR_MS", 0.0)
    monkeypatch.setattr(recall, "BUDGET_SHARE", 1e-9)
    slow = recall.tune(index("IDMap2,HNSW16,Flat"), "IDMap2,HNSW16,Flat", base[ids], ids, truth, exact_ms, 3000)
    assert not slow.met and "even its cheapest setting" in slow.note and slow.params == "efSearch=16"


def test_an_ivf_with_a_graph_over_its_centroids_is_tuned_on_both_knobs(tmp_path):
    """``IVF{n}_HNSW32`` (what ivfpq becomes from 8,192 lists on): the check walks nprobe with the
    graph's search depth beside it, and the re-ranking depth; the index it leaves reaches the target
    on held-out queries and returns k hits for each."""
    rng = np.random.default_rng(4)
    vectors = _collection("crowded", 6_300, rng)
    base, queries = vectors[:6_000], vectors[6_000:]
    _build(tmp_path / "i", base, "IVF64_HNSW32,PQ16x4fs,Refine(SQfp16)")
    with ImageIndex.open(tmp_path / "i") as idx:
        check, spec = idx.recall_check, idx.manifest["faiss"]
        assert spec["factory"] == "IDMap2,IVF64_HNSW32,PQ16x4fs,Refine(SQfp16)" and spec["params"] == check.params
        assert check.met and check.recall >= 0.95, check
        settings = dict(kv.split("=") for kv in check.params.split(","))
        assert set(settings) == {"nprobe", "quantizer_efSearch", "k_factor_rf"}
        assert int(settings["quantizer_efSearch"]) >= int(settings["nprobe"])  # the graph finds the lists probed
        hits = idx.search(queries, 10)
        assert all(len(h) == 10 for h in hits)
    assert _held_out_recall(tmp_path / "i", base, queries) >= 0.94


def test_the_knob_walk_reaches_deep_re_ranking_and_the_graph_depth():
    """4-bit codes order crowded neighbours loosely: the walk goes to 1,024 candidates per hit,
    and an HNSW quantizer is searched at twice nprobe (at least 64)."""
    import faiss

    def index(factory):
        return faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)

    rows = recall._ladder(index("IDMap2,IVF64_HNSW32,PQ16x4fs,Refine(SQfp16)"), "IDMap2,IVF64_HNSW32,PQ16x4fs,Refine(SQfp16)")
    assert [r[0].rsplit("=", 1)[1] for r in rows] == [str(d) for d in recall.RERANK_DEPTHS] and rows[-1][0].endswith("=1024")
    assert rows[0][0] == "nprobe=1,quantizer_efSearch=64,k_factor_rf=1" and rows[0][-1].startswith("nprobe=64,quantizer_efSearch=128,")
    assert recall._ladder(index("IVF64,SQ8"), "IVF64,SQ8") == [[f"nprobe={2 ** i}" for i in range(7)]]


def test_the_exact_time_is_one_core_scanning_every_vector():
    """The latency budget is a share of this estimate; it must not depend on BLAS threads."""
    rng = np.random.default_rng(5)
    base = _unit(rng.standard_normal((20_000, DIM)))
    chunks = [(np.arange(i, i + 5000), base[i:i + 5000]) for i in range(0, 20_000, 5000)]
    truth, ms = recall.exact_neighbours(base[:50], np.arange(50), chunks)
    brute = np.argsort(-(base[:50] @ base.T), axis=1)[:, 1:11]
    assert ms > 0 and (truth == brute).mean() >= 0.99
