"""index_folder through the API: interruption keeps committed work and a re-run completes it."""

import pytest

from imgembed.api import IndexOptions, LocalPool, index_folder
from imgembed.errors import InputError
from imgembed.index import ImageIndex

from conftest import copy_classes


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_run_keeps_committed_chunks_and_resumes(tmp_path, model, workers):
    """In-process decoding and the worker pool alike: an exception in the consumer (Ctrl-C in
    the CLI) stops the run, keeps what was committed, and leaves no decode worker behind."""
    import multiprocessing

    folder = copy_classes(tmp_path / "photos", "birds", "fish", "fruit")
    index = tmp_path / "idx"

    def interrupt_after_two_batches(done, total):
        if done >= 16:
            raise Stop

    with pytest.raises(Stop):
        index_folder(folder, index, model, options=IndexOptions(batch_size=8, commit_every=8),
                     executor=LocalPool(workers=workers), progress=interrupt_after_two_batches)
    assert multiprocessing.active_children() == []
    with ImageIndex.open(index) as idx:  # readable, consistent, holds the committed chunks
        assert len(idx) == 16
    report = index_folder(folder, index, model, options=IndexOptions(batch_size=8), executor=LocalPool(workers=0))
    assert (report.added, report.unchanged, report.total) == (14, 16, 30)
    with ImageIndex.open(index) as idx:
        rows = idx.store.rows_under(str(folder.resolve()))
        assert len(rows) == 30 and len(idx) == 30


def test_missing_folder_is_an_input_error(tmp_path, model):
    with pytest.raises(InputError, match="not a folder"):
        index_folder(tmp_path / "nope", tmp_path / "idx", model)
