"""The storage engine: an index directory and everything that reads or writes it. No torch.

    directory.py  ImageIndex: opens, searches, commits and publishes one index directory
    manifest.py   manifest.json: format version, the model's identity, the FAISS type
    store.py      metadata.sqlite: one row per image with its vector (the source of truth),
                  skipped files, tombstones of removed ones
    backends.py   the FAISS index behind one interface: in RAM, or lists on disk
    vectors.py    plain functions over FAISS indexes: types, build, search, save, load
    recall.py     approximate indexes measure their Recall@10 and tune themselves
    expansion.py  search that uses the collection: augmented vectors, query expansion (numpy)
    planner.py    what an ``index`` run must do, decided from a folder walk and the stored rows
    lock.py       one writer at a time (an fcntl lock that a killed writer never leaves behind)

Imports point one way: ``directory`` uses the others, which use nothing of each other but
``store`` and ``vectors`` (``expansion`` uses nothing); nothing here imports a model.
"""

from .directory import Hit, ImageIndex
from .manifest import DATABASE, FAISS_FILE, MANIFEST, describe_mismatch, read_manifest

__all__ = ["ImageIndex", "Hit", "read_manifest", "describe_mismatch", "MANIFEST", "DATABASE", "FAISS_FILE"]
