"""Atomic output: write a file or a whole folder as a temporary sibling, then `os.replace` it over the target.

An interruption (Ctrl-C, a crash, a killed job) leaves either the old file/folder or the complete new one,
never a partial one; the temporary sibling is removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `path`, on error it is deleted.

    `suffix` (default: the target's own, e.g. ".png") lets writers that infer the format from the name work.
    Missing parent folders are created. The file gets the mode of the file it replaces, or for a new file the one
    `open()` would give it (0o666 less the umask). A symbolic link is followed: its target is replaced, the link
    stays (as `open(path, "w")` would do).

    Raises:
        IsADirectoryError: `path` is a folder (refused before anything is written, naming it).
    """
    path = Path(path)
    check_file_destination(path)
    if path.is_symlink():  # write where the link points: replacing the link itself would leave its target stale
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=(path.suffix if suffix is None else suffix) + ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _file_mode(path))  # mkstemp makes the file private (0600)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_file_destination(path: str | Path) -> None:
    """Refuse an output file path that is an existing folder, before the work whose result it is to hold (the final
    `os.replace` would fail only then, naming the temporary file)."""
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of the file to write")


def _file_mode(path: Path) -> int:
    """The mode for a file written to `path`: the existing file's, else what `open()` gives (0o666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask. Read from /proc where it can be: `os.umask` can only be read by setting it, which for
    that moment changes the mode of files other threads create."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(value, indent: int | None = None) -> str:
    """`value` as strict JSON: NaN and infinities (an undefined metric, a missing time) become null, where
    `json.dumps` would write the bare `NaN` / `Infinity` that JSON readers other than Python's refuse."""
    def finite(item):
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(entry) for key, entry in item.items()}
        if isinstance(item, list | tuple):
            return [finite(entry) for entry in item]
        return item

    return json.dumps(finite(value), indent=indent, allow_nan=False)


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse an output path that is not a folder, or an existing folder without `force`."""
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir() or out_dir.is_symlink():
            raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output path")
        if not force:
            raise FileExistsError(f"{out_dir} already exists; pass --force (force=True) to replace it")


@contextlib.contextmanager
def atomic_folder(out_dir: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder next to `out_dir` (same file system, so the final move is atomic).

    On success the staging folder replaces `out_dir` (an existing folder, allowed only with `force`, is swapped
    out and deleted) with ordinary permissions; on an error or Ctrl-C it is removed, together with any parent
    folders created for it, and `out_dir` is left as it was.
    """
    out_dir = Path(out_dir).absolute()
    check_destination(out_dir, force)
    created = []  # missing parents, deepest first
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        yield staging
        check_destination(out_dir, force)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp (and transformers' shard writer) make things private
        for file in staging.rglob("*"):
            if file.is_file():
                os.chmod(file, 0o666 & ~umask)
        if not out_dir.exists():
            os.replace(staging, out_dir)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


__all__ = ["atomic_path", "write_text_atomic", "atomic_folder", "check_destination", "check_file_destination"]
