"""A node run's multiprocess metrics folder: empty at start, so no earlier run's counts add to this one's."""

from pathlib import Path

from flashstock.server._metrics import fresh_multiprocess_folder


def test_files_of_an_earlier_run_are_removed(tmp_path: Path):
    earlier = tmp_path / "metrics"
    earlier.mkdir()
    (earlier / "counter_4242.db").write_bytes(b"an earlier run's counts")
    folder = fresh_multiprocess_folder(str(tmp_path))
    assert folder == earlier.resolve()
    assert list(folder.iterdir()) == []


def test_a_data_dir_that_cannot_hold_it_gives_a_temporary_folder(tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    folder = fresh_multiprocess_folder(str(not_a_folder))
    try:
        assert folder.is_dir() and not folder.is_relative_to(tmp_path)
        assert list(folder.iterdir()) == []
    finally:
        folder.rmdir()
