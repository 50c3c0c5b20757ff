"""Atomic output (`ast_hf.atomic_io`): a file written atomically gets the mode a plain `open()` would give it
(0o666 less the umask) when new, and keeps its own mode when replaced; a failed write leaves the old file."""

import json
import os
import stat

import pytest

from ast_hf.atomic_io import atomic_path, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    with atomic_path(tmp_path / "out.png") as tmp:
        tmp.write_bytes(b"png")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "out.png") == 0o666 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "events.tsv"
    target.write_text("old")
    os.chmod(target, 0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640
    os.chmod(target, 0o604)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new" and mode(target) == 0o604
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.tsv"]  # no temporary file left behind


def test_json_text_writes_undefined_numbers_as_null():
    from ast_hf.atomic_io import json_text

    value = {"f1": 0.5, "error_rate": float("nan"), "nested": [float("inf"), {"x": -float("inf"), "n": 3}]}
    assert json.loads(json_text(value)) == {"f1": 0.5, "error_rate": None, "nested": [None, {"x": None, "n": 3}]}
    assert "NaN" not in json_text(value, indent=2) and "Infinity" not in json_text(value)


def test_a_folder_is_refused_before_anything_is_written(tmp_path):
    """os.replace failed only at the end, after the caller's work, naming the temporary file; now the folder is
    named before the body runs, and nothing is left behind."""
    folder = tmp_path / "out"
    (folder / "inside").mkdir(parents=True)
    ran = []
    with pytest.raises(IsADirectoryError, match=f"{folder} is a folder; give the path of the file to write"):
        with atomic_path(folder) as tmp:
            ran.append(tmp)
    assert ran == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in folder.iterdir()] == ["inside"]


def test_a_symbolic_link_is_followed_not_replaced(tmp_path):
    """An output path that is a link (results/latest.csv -> runs/7.csv): the file it points to gets the new content
    and the link stays a link (os.replace on the link swapped it for a plain file, leaving the target stale)."""
    target = tmp_path / "runs" / "7.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(target)
    write_text_atomic(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n" and link.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.csv", "runs"]
    assert [p.name for p in target.parent.iterdir()] == ["7.csv"]  # no temporary file left beside the target
