"""Sorting an inbox in another style into 10-per-class labelled folders: precision against
coverage of `imgembed sort`'s label spreading, next to per-image `imgembed classify` (k-NN vote,
k = 5) on the same vectors; the default threshold chosen on tuning tasks, confirmed on held-out
ones (bench/sort_data.py builds the tasks).

    .venv/bin/python bench/sort.py                  # every task: table + bench/data/sort/report.json
    .venv/bin/python bench/sort.py --grid           # also the parameter grid on the tuning tasks
    .venv/bin/python bench/sort.py --cli TASK       # the real command on a copy of one task (dry run, run, undo)

Vectors come from the default model through the product's own path: each task's root is
indexed with `index_folder`, its inbox embedded by `plan_sort` (which caches it), so the
methods below see exactly what `imgembed sort` and `imgembed classify` see. Per task and
method: accuracy at full coverage, and precision (share right) of the most confident images at
coverages 0.3, 0.5 and 0.7 (ranked by each method's own confidence), and at the default
threshold its coverage and precision beside classify's precision at that same coverage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import sort_data

from imgembed import api
from imgembed.collection import sorting
from imgembed.config import CLASSIFY_K, SORT_MIN_CONFIDENCE

DATA = HERE / "data" / "sort"
COVERAGES = (0.3, 0.5, 0.7, 1.0)


def vectors(task) -> dict:
    """The task's labelled and inbox vectors as the product computes them, cached."""
    cache = DATA / "vectors" / f"{task.name}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    index_dir = DATA / "indexes" / task.name
    shutil.rmtree(index_dir, ignore_errors=True)
    api.index_folder(task.root, index_dir)
    from imgembed.api import sorting as product

    with api.Searcher(index_dir) as s:
        rows, labelled = product._labelled(s.index, s.index.store.roots()[0], task.inbox)
        inbox_rows, inbox, _ = product._embed_inbox(index_dir, task.inbox, s.model, None)
    names = np.array([Path(r.path).name for r in inbox_rows])
    out = {"labelled": labelled, "labels": np.array([r.label for r in rows]), "inbox": inbox, "names": names,
           "truth": np.array([task.truth[n] for n in names])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def precision_at(correct: np.ndarray, confidence: np.ndarray, coverage: float) -> float:
    order = np.argsort(-confidence, kind="stable")
    take = max(1, round(coverage * len(order)))
    return float(correct[order[:take]].mean())


def evaluate(v: dict, method: str, **params) -> dict:
    classes = sorted(set(v["labels"].tolist()))
    pos = {c: i for i, c in enumerate(classes)}
    codes = np.array([pos[c] for c in v["labels"]])
    if method == "classify":
        found = sorting.nearest(v["labelled"], codes, len(classes), v["inbox"], CLASSIFY_K)
    else:
        found = sorting.propose(v["labelled"], codes, len(classes), v["inbox"], **params)
    truth = np.array([pos.get(c, -1) for c in v["truth"]])
    correct = found.best == truth
    return {"correct": correct, "confidence": found.confidence,
            "accuracy": float(correct.mean()),
            **{f"p@{c}": precision_at(correct, found.confidence, c) for c in COVERAGES}}


def single_class(v: dict) -> dict:
    """Each class's inbox images alone as an inbox (a folder of one kind, the case that an
    inbox-wide correction could get wrong): mean accuracy of each method over the classes."""
    out = {}
    for method in ("classify", "sort"):
        scores = []
        for c in sorted(set(v["truth"].tolist())):
            keep = v["truth"] == c
            if keep.sum() >= 5:
                part = {**v, "inbox": v["inbox"][keep], "truth": v["truth"][keep], "names": v["names"][keep]}
                scores.append(evaluate(part, "lp" if method == "sort" else "classify")["accuracy"])
        out[method] = float(np.mean(scores))
    return out


def at_threshold(ours: dict, base: dict, threshold: float) -> dict:
    chosen = ours["confidence"] >= threshold
    coverage = float(chosen.mean())
    return {"coverage": coverage, "precision": float(ours["correct"][chosen].mean()) if chosen.any() else float("nan"),
            "classify_same_coverage": precision_at(base["correct"], base["confidence"], coverage) if coverage else float("nan")}


def grid(tasks: dict, all_vectors: dict) -> list[dict]:
    """Mean over the tuning tasks of precision at coverage 0.3/0.5/0.7, per setting."""
    rows = []
    for rounds, k, alpha, gamma in itertools.product((0, 5), (5, 10, 20), (0.5, 0.8, 0.9, 0.99), (1.0, 3.0)):
        scores = [evaluate(all_vectors[t], "lp", rounds=rounds, k=k, alpha=alpha, gamma=gamma)
                  for t, task in tasks.items() if task.role == "tuning"]
        row = {"shift_rounds": rounds, "k": k, "alpha": alpha, "gamma": gamma,
               **{key: float(np.mean([s[key] for s in scores])) for key in ("accuracy", "p@0.3", "p@0.5", "p@0.7")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cli_check(task) -> dict:
    """The real command on a copy of the task: a dry run changes nothing, the run moves exactly
    what it proposed, undo restores both folders byte for byte."""
    work = DATA / "cli" / task.name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(task.root, work / "root")
    shutil.copytree(task.inbox, work / "inbox")
    exe = str(Path(sys.executable).with_name("imgembed"))
    index = str(work / "index")

    def run(*args):
        return subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout

    def state():
        return {str(p.relative_to(work)): p.read_bytes() for p in sorted((work / "root").rglob("*")) if p.is_file()} | \
               {str(p.relative_to(work)): p.read_bytes() for p in sorted((work / "inbox").rglob("*")) if p.is_file()}

    run("index", str(work / "root"), "--index", index, "-q")
    before = state()
    t0 = time.perf_counter()
    proposed = json.loads(run("sort", str(work / "inbox"), "--into", str(work / "root"), "--index", index,
                              "--dry-run", "--json", "-q"))
    dry_s = time.perf_counter() - t0
    assert state() == before, "a dry run changed files"
    t0 = time.perf_counter()
    done = json.loads(run("sort", str(work / "inbox"), "--into", str(work / "root"), "--index", index,
                          "--yes", "--json", "-q"))
    run_s = time.perf_counter() - t0
    moved = {p["path"]: p["to"] for p in done if p["label"]}
    assert moved == {p["path"]: p["to"] for p in proposed if p["label"]}, "the run moved other files than proposed"
    right = sum(task.truth[Path(p).name] == Path(to).parent.name for p, to in moved.items())
    run("undo", "--index", index)
    assert state() == before, "undo did not restore both folders"
    return {"task": task.name, "proposed": len(proposed), "moved": len(moved), "right": right,
            "dry_run_s": round(dry_s, 1), "run_s": round(run_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--cli", nargs="*", help="tasks to run through the real command")
    args = parser.parse_args()
    tasks = sort_data.tasks()
    all_vectors = {name: vectors(t) for name, t in tasks.items()}
    report = {"threshold": SORT_MIN_CONFIDENCE, "tasks": []}
    if args.grid:
        report["grid"] = grid(tasks, all_vectors)
    print(f"\n| task | role | style | classes | inbox | method | accuracy | P@0.3 | P@0.5 | P@0.7 | "
          f"at {SORT_MIN_CONFIDENCE}: coverage | precision | classify, same coverage | one-class inboxes: accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, task in tasks.items():
        v = all_vectors[name]
        base, ours = evaluate(v, "classify"), evaluate(v, "lp")
        t = at_threshold(ours, base, SORT_MIN_CONFIDENCE)
        alone = single_class(v)
        for method, r in (("classify", base), ("sort", ours)):
            extra = (f"{t['coverage']:.2f} | {t['precision']:.3f} | {t['classify_same_coverage']:.3f}"
                     if method == "sort" else " | | ") + f" | {alone[method]:.3f}"
            print(f"| {name} | {task.role} | {task.style} | {len(set(v['labels'].tolist()))} | {len(v['inbox'])} | "
                  f"{method} | {r['accuracy']:.3f} | {r['p@0.3']:.3f} | {r['p@0.5']:.3f} | {r['p@0.7']:.3f} | {extra} |")
        report["tasks"].append({"task": name, "role": task.role, "style": task.style,
                                "classify": {k: v for k, v in base.items() if k not in ("correct", "confidence")},
                                "sort": {k: v for k, v in ours.items() if k not in ("correct", "confidence")},
                                "at_threshold": t, "one_class_inboxes": alone})
    for name in args.cli or []:
        r = cli_check(tasks[name])
        report.setdefault("cli", []).append(r)
        print(json.dumps(r))
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
