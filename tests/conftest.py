import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
QUERIES = ROOT / "sample_queries"

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


def run_cli(*args, env=None, check=True, cwd=None):
    """Run the real CLI in a subprocess; return CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("IMGEMBED_INDEX", None) if env is None or "IMGEMBED_INDEX" not in env else None
    proc = subprocess.run([sys.executable, "-m", "imgembed", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"imgembed {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run_json(*args, **kw):
    return json.loads(run_cli(*args, "--json", **kw).stdout)
