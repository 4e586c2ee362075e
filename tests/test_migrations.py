"""Schema versions of metadata.sqlite: an index of an older version opens and searches as it is
(readers write nothing), and the next write steps it up to the newest, one transaction a step.

The schemas below are written out from the history of imgembed/index/store.py, not taken from
it: version 1 is what the first release created, 2 added images.phash (perceptual hashes), 3
the `removed` table (tombstones), 4 the search expansion's `neighbours` and `augmented`. conftest.downgrade turns today's files into older versions."""

import sqlite3

import pytest

from imgembed.api import LocalPool, Searcher, index_folder
from imgembed.errors import IndexCorruptError, IndexVersionError
from imgembed.index import DATABASE, ImageIndex, store
from imgembed.index.store import SCHEMA_VERSION, MetadataStore

from conftest import QUERIES, copy_classes, downgrade

V1 = {"tables": {"meta": ["key", "value"],
                 "images": ["id", "root", "path", "label", "bytes", "mtime_ns", "hash", "width", "height", "vector",
                            "indexed_at"],
                 "skipped": ["root", "path", "reason", "bytes", "mtime_ns"]},
      "indexes": ["images_hash"]}
V2 = {"tables": {**V1["tables"], "images": V1["tables"]["images"] + ["phash"]}, "indexes": V1["indexes"]}
V3 = {"tables": {**V2["tables"], "removed": ["hash", "bytes", "width", "height", "phash", "vector", "root", "path",
                                             "removed_at"]},
      "indexes": V2["indexes"] + ["removed_hash"]}
V4 = {"tables": {**V3["tables"], "neighbours": ["id", "nb", "sim"], "augmented": ["id", "vector"]},
      "indexes": sorted(V3["indexes"] + ["neighbours_id", "neighbours_nb"])}
SCHEMAS = {1: V1, 2: V2, 3: V3, 4: V4}
QUERY_FILES = sorted(QUERIES.glob("*.png"))


def schema(database) -> dict:
    """The recorded version, the tables with their columns, and the named indexes of a file."""
    db = sqlite3.connect(database)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                          "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        tables = {name: [r[1] for r in db.execute(f"PRAGMA table_info({name})")] for name in names}
        indexes = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                            "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        db.close()
    return {"version": version, "tables": tables, "indexes": indexes}


def at(version) -> dict:
    return {"version": version, **SCHEMAS[version]}


def contents(database, *, phash=True) -> dict:
    """Every row of images (without phash if not ``phash``) and skipped, in a stable order; the
    rows of removed where the table exists."""
    db = sqlite3.connect(database)
    try:
        images = "id, root, path, label, bytes, mtime_ns, hash, width, height, vector, indexed_at"
        out = {"images": db.execute(f"SELECT {images}{', phash' if phash else ''} FROM images ORDER BY id").fetchall(),
               "skipped": db.execute("SELECT * FROM skipped ORDER BY root, path").fetchall()}
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'removed'").fetchone():
            out["removed"] = db.execute("SELECT * FROM removed ORDER BY rowid").fetchall()
    finally:
        db.close()
    return out


def kept(before: dict, after: dict) -> bool:
    """Whether every row of ``before`` is in ``after`` unchanged (``after`` may have more tables)."""
    return all(after.get(table) == rows for table, rows in before.items())


def copy_database(src, dst):
    """A consistent copy of a SQLite file (its WAL included), through SQLite's backup."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()
    return dst


def answers(index_dir, model) -> list:
    with Searcher(index_dir, model, expansion="none") as searcher:
        return [[(h.rank, h.row.full_path, h.row.label, round(h.score, 5)) for h in result.hits]
                for result in searcher.search(QUERY_FILES, k=5)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three sample classes and a file that is skipped (empty)."""
    top = copy_classes(tmp_path_factory.mktemp("migrations") / "photos", "clocks", "fish", "fruit")
    (top / "fish" / "empty.png").write_bytes(b"")
    return top


@pytest.fixture(scope="module")
def fresh(folder, model, tmp_path_factory):
    """``folder`` indexed by today's code."""
    directory = tmp_path_factory.mktemp("fresh") / "idx"
    index_folder(folder, directory, model, executor=LocalPool(workers=0))
    return directory


def test_the_schemas_here_cover_every_version(fresh):
    assert max(SCHEMAS) == SCHEMA_VERSION == 1 + len(store._STEPS)  # a new step needs its schema here, and in downgrade()
    assert schema(fresh / DATABASE) == at(SCHEMA_VERSION)  # a new index is at the newest version
    for version in range(1, SCHEMA_VERSION):
        assert store._STEPS[version - 1].__name__ == f"_migrate_to_{version + 1}"


def test_a_version_1_index_is_searched_as_it_is_then_upgraded_by_the_next_run(folder, fresh, model, tmp_path):
    old = tmp_path / "old"
    index_folder(folder, old, model, executor=LocalPool(workers=0))
    downgrade(old / DATABASE, 1)  # as the first release wrote it
    assert schema(old / DATABASE) == at(1)
    before = contents(old / DATABASE, phash=False)
    assert len(before["images"]) == 30 and [r[1] for r in before["skipped"]] == ["fish/empty.png"]

    expected = answers(fresh, model)
    assert answers(old, model) == expected  # a reader: same answers, from the old schema
    with ImageIndex.open(old, model.identity) as idx:
        assert idx.problem is None and len(idx) == 30 and not idx.store.has_phash
    assert schema(old / DATABASE) == at(1) and contents(old / DATABASE, phash=False) == before  # nothing written

    report = index_folder(folder, old, model, executor=LocalPool(workers=0))
    assert (report.embedded, report.moved, report.removed, report.restored, report.unchanged) == (0, 0, 0, 0, 30)
    assert [reason for _, reason in report.skipped] == ["empty file"]
    assert schema(old / DATABASE) == at(SCHEMA_VERSION)
    after = contents(old / DATABASE)
    assert kept(before, contents(old / DATABASE, phash=False))  # ids, paths, hashes, vectors, skipped
    assert all(row[-1] is None for row in after["images"])  # rows embedded before keep NULL until they change
    assert after["removed"] == []
    with ImageIndex.open(old, model.identity) as idx:
        assert idx.problem is None and len(idx) == 30 and sorted(idx.store.ids()) == [r[0] for r in before["images"]]
    assert answers(old, model) == expected

    again = index_folder(folder, old, model, executor=LocalPool(workers=0))
    assert (again.embedded, again.unchanged) == (0, 30)
    assert schema(old / DATABASE) == at(SCHEMA_VERSION) and contents(old / DATABASE) == after  # changes nothing


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_each_step_alone_takes_its_version_to_the_next(fresh, tmp_path, version):
    database = copy_database(fresh / DATABASE, tmp_path / DATABASE)
    downgrade(database, version)
    assert schema(database) == at(version)
    before = contents(database, phash=version >= 2)
    with MetadataStore(database) as opened:  # opening reads, and writes nothing
        assert opened.version == version and schema(database) == at(version)
        assert opened.upgrade(version + 1) == version + 1 == opened.version
    assert schema(database) == at(version + 1)
    assert kept(before, contents(database, phash=version >= 2))
    with MetadataStore(database) as opened:
        assert opened.has_phash == (version + 1 >= 2) and opened.has_tombstones == (version + 1 >= 3)


@pytest.mark.parametrize("extended", ["phash", "removed"])
def test_version_1_files_that_earlier_releases_extended_in_place_are_upgraded(fresh, tmp_path, extended):
    """Releases before versioned migrations added the phash column (at the first write adding
    an image) and the tombstone table (at the first removal) without moving the version from 1:
    a version-1 file may hold either; each step makes only the change that is missing."""
    database = copy_database(fresh / DATABASE, tmp_path / DATABASE)
    downgrade(database, 2 if extended == "phash" else 1)
    db = sqlite3.connect(database)
    with db:
        if extended == "removed":
            for statement in store._TOMBSTONES:
                db.execute(statement)
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    before = contents(database, phash=False)
    with MetadataStore(database) as opened:
        assert opened.version == 1 and opened.has_phash == (extended == "phash")
        assert opened.has_tombstones == (extended == "removed")
        opened.upgrade()
    assert schema(database) == at(SCHEMA_VERSION) and kept(before, contents(database, phash=False))


def test_a_failed_step_leaves_the_version_it_started_from(fresh, tmp_path, monkeypatch):
    database = copy_database(fresh / DATABASE, tmp_path / DATABASE)
    downgrade(database, 1)

    def half_done(db):  # its change made, then SQLite fails it (a full disk, say)
        store._migrate_to_2(db)
        db.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")

    monkeypatch.setattr(store, "_STEPS", (half_done, *store._STEPS[1:]))
    with MetadataStore(database) as opened:
        with pytest.raises(IndexCorruptError, match=r"metadata.sqlite: cannot upgrade the metadata database "
                                                    r"from schema version 1 \(no such table"):
            opened.upgrade()
        assert opened.version == 1
    assert schema(database) == at(1)  # the step's own change rolled back with it
    monkeypatch.undo()
    with MetadataStore(database) as opened:
        assert opened.upgrade() == SCHEMA_VERSION
    assert schema(database) == at(SCHEMA_VERSION)


def test_a_newer_version_is_refused_by_readers_and_writers(fresh, tmp_path):
    database = copy_database(fresh / DATABASE, tmp_path / DATABASE)
    db = sqlite3.connect(database)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    message = rf"schema version {SCHEMA_VERSION + 1} is newer than this imgembed supports \({SCHEMA_VERSION}\)"
    for create in (False, True):
        with pytest.raises(IndexVersionError, match=message):
            MetadataStore(database, create=create)
    assert schema(database)["version"] == SCHEMA_VERSION + 1
