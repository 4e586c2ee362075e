"""``manifest.json``: what an index directory is, which model made its vectors, which FAISS type
holds them.

The manifest carries a format version; a reader refuses a newer or damaged one by name. Its
``model`` entry is the model's identity (backbone, weights digest, head, preprocessing, pooling)
and is checked on every open, so an index is never searched or extended with vectors of another
model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import IndexCorruptError, IndexNotFoundError, IndexVersionError, ModelMismatchError
from ..imaging.files import atomic_path
from . import vectors

FORMAT = "imgembed-index"
FORMAT_VERSION = 1
MANIFEST, DATABASE, FAISS_FILE = "manifest.json", "metadata.sqlite", "vectors.faiss"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new(model_identity: dict, model_source: dict | None, spec: vectors.IndexSpec) -> dict:
    """The manifest of an empty index."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "created_at": now(),
            "model": model_identity, "model_source": model_source, "faiss": spec.to_dict()}


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise IndexNotFoundError(f"no imgembed index in {directory} ({MANIFEST} missing); "
                                 f"build one with: imgembed index FOLDER --index {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexCorruptError(f"{path}: damaged manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not an imgembed index manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexVersionError(f"{path}: index format version {version} is not supported by this "
                                f"imgembed (reads up to {FORMAT_VERSION}); upgrade imgembed")
    return manifest


def spec_of(manifest: dict) -> vectors.IndexSpec:
    return vectors.IndexSpec.from_dict(manifest["faiss"])


def describe_mismatch(expected: dict, actual: dict) -> str:
    keys = [k for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    return "; ".join(f"{k}: index has {expected.get(k)!r}, model has {actual.get(k)!r}" for k in keys)


def check_model(directory: Path, manifest: dict, identity: dict | None) -> None:
    """Refuse a model other than the one that built the index (None: no model to check)."""
    if identity is not None and manifest.get("model") != identity:
        raise ModelMismatchError(
            f"{Path(directory) / MANIFEST}: index was built with another model "
            f"({describe_mismatch(manifest.get('model') or {}, identity)}); "
            "search it without --model, or index into a new --index DIR")
