from pathlib import Path

import pytest

from apps.core.files import write_atomically


def test_write_atomically_creates_folders_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "rows.jsonl"
    write_atomically(path, b"one\n")
    write_atomically(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "rows.jsonl"
    write_atomically(path, b"old\n")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("apps.core.files.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, b"new\n")
    assert path.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]
