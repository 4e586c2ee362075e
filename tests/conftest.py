import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
QUERIES = ROOT / "sample_queries"
CLASSES = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())  # the sample classes (sub-folders)

# The identity of a made-up model, for indexes built from made-up vectors (dim: theirs).
TOY_IDENTITY = {"backbone": "toy", "weights": "none:seed0", "head": None, "checkpoint": None, "dim": 8,
                "preprocess": {"resize": 8, "crop": 8, "mean": [0, 0, 0], "std": [1, 1, 1],
                               "interpolation": "bilinear"}}
TOY_SOURCE = {"model": "toy", "weights": "none"}

# ONNX exports made by the tests (and the CLIs they run) go to a cache of their own.
os.environ["IMGEMBED_MODEL_CACHE"] = tempfile.mkdtemp(prefix="imgembed-test-models-")


@pytest.fixture(scope="session")
def model():
    """The default model as users get it: under ONNX Runtime where that is installed."""
    from imgembed.api import load_model

    return load_model()


@pytest.fixture(scope="session")
def torch_model():
    """The default model under torch (precision "auto": bf16 on CPUs that run it natively)."""
    from imgembed.api import load_model

    return load_model(runtime="torch")


@pytest.fixture(scope="session")
def sample_files():
    files = sorted(p for p in SAMPLES.rglob("*.png"))
    assert len(files) >= 48
    return files


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, model):
    """sample_images/ indexed once with the default model, shared read-only by tests."""
    from imgembed.api import LocalPool, index_folder

    directory = tmp_path_factory.mktemp("idx") / "samples"
    index_folder(SAMPLES, directory, model, executor=LocalPool(workers=0))
    return directory


@pytest.fixture
def built(tmp_path):
    """Builds a toy index without a model: ``built(images, index_type=None, skipped=())`` opens
    ``tmp_path / "idx"`` for writing under :data:`TOY_IDENTITY` (with the images' dimension),
    commits the :class:`~imgembed.index.store.NewImage` rows and ``skipped`` in one chunk, saves,
    and returns ``(directory, ids)``, the new rows' ids as an int64 array in the images' order."""
    import numpy as np

    from imgembed.index import ImageIndex

    def build(images, index_type=None, skipped=()):
        identity = {**TOY_IDENTITY, "dim": len(images[0].vector)}
        with ImageIndex.open_for_write(tmp_path / "idx", identity, TOY_SOURCE, index_type) as idx:
            ids = idx.commit(add=images, skipped=skipped)
            idx.save()
        return tmp_path / "idx", np.asarray(ids, np.int64)

    return build


def copy_classes(dest, *classes):
    """Copy sample classes (sub-folders of sample_images/) into ``dest``; return ``dest``."""
    for name in classes:
        shutil.copytree(SAMPLES / name, Path(dest) / name)
    return Path(dest)


def downgrade(database, version):
    """Turn a metadata.sqlite written by today's code into what schema ``version`` was, as the
    releases of that version wrote it: drop what each later step added, newest first, and record
    ``version``. Rows keep their ids, paths and vectors. Below version 4 the manifest beside it
    loses its search expansion too, which those releases did not write."""
    from imgembed.index.store import SCHEMA_VERSION

    assert SCHEMA_VERSION == 4, "downgrade() knows schema versions 1 to 4: teach it what the new step adds"
    db = sqlite3.connect(database)
    with db:
        if version < 4:  # search expansion
            for name in ("neighbours_nb", "neighbours_id"):
                db.execute(f"DROP INDEX IF EXISTS {name}")
            db.execute("DROP TABLE IF EXISTS neighbours")
            db.execute("DROP TABLE IF EXISTS augmented")
            manifest = Path(database).parent / "manifest.json"
            if manifest.is_file():
                data = json.loads(manifest.read_text())
                data.pop("expansion", None)
                manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if version < 3:  # tombstones
            db.execute("DROP INDEX IF EXISTS removed_hash")
            db.execute("DROP TABLE IF EXISTS removed")
        if version < 2:  # perceptual hashes
            db.execute("ALTER TABLE images DROP COLUMN phash")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    db.close()


def run_cli(*args, env=None, check=True, cwd=None):
    """Run the real CLI in a subprocess; return CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("IMGEMBED_INDEX", None) if env is None or "IMGEMBED_INDEX" not in env else None
    proc = subprocess.run([sys.executable, "-m", "imgembed", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"imgembed {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


# A subprocess in which torch (and, with `block`, other modules) cannot be imported, as in an
# install without the train extra.
NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "for name in {block!r}: sys.modules[name] = None\n"
            "from imgembed.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    sys.exit(e.code)\n")


def without_torch(*args, cache, check=True, block=()):
    """Run the real CLI where torch and the modules in ``block`` cannot be imported, with the
    model cache ``cache``; return CompletedProcess with text output."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(block=tuple(block)), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
                          env={**os.environ, "IMGEMBED_MODEL_CACHE": str(cache)})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def run_json(*args, **kw):
    return json.loads(run_cli(*args, "--json", **kw).stdout)
