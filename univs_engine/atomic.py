"""Atomic writes: a file or folder appears under its final name complete, or not at all.

The temporary output lives next to the target (same folder, so the final rename is atomic) under a hidden name
(``.<name>.<random><suffix>``) and has the permissions of an ordinary new file or folder (``0o666`` / ``0o777``
less the umask). Standard library only, so any module can use it.

    with atomic_file(path) as tmp:   # an exception (even KeyboardInterrupt) removes tmp; path is untouched
        write_something(tmp)
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

__all__ = ["normal_mode", "temp_file", "check_target", "AtomicFile", "AtomicDir", "atomic_file"]

PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_mode(path: PathLike) -> None:
    """Give a file or folder made private by ``tempfile`` the permissions of an ordinary new one (umask applied)."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def temp_file(path: PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty hidden file next to ``path`` with ordinary permissions and return its name."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        normal_mode(tmp)  # mkstemp makes 0600
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def check_target(path: Path, overwrite: bool, refuse_symlink: bool) -> None:
    """FileExistsError for a symbolic link at ``path`` (with ``refuse_symlink``) or any existing ``path``
    (without ``overwrite``)."""
    if refuse_symlink and path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link; refusing to write through it (remove it first)")
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_new(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists, also when it appears at the last moment."""
    try:
        os.link(tmp, path)  # fails when the name exists: nothing is ever overwritten
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it") from None
    except OSError:  # file systems without hard links: check, then rename (a small race remains)
        check_target(path, False, False)
        os.replace(tmp, path)
        return
    try:
        os.unlink(tmp)
    except OSError:  # the target is in place; a stray temp name is no reason to report a failure
        pass


class _Atomic:
    """``with`` support: the block gets ``tmp``; commit when it ends normally, abort when it raises."""

    path: Path
    tmp: Path

    def commit(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


class AtomicFile(_Atomic):
    """A hidden temp file ``tmp`` next to ``path`` that :meth:`commit` moves over ``path``.

    ``overwrite=False``: an existing ``path`` raises FileExistsError, now or when it appears before the commit.
    ``refuse_symlink=True``: a symbolic link at ``path`` is refused even with ``overwrite``.
    ``fsync=True``: the data reach the disk before the rename. ``suffix`` ends the temp name (a writer that
    picks the format from the extension needs the target's).
    """

    def __init__(self, path: PathLike, *, overwrite: bool = True, fsync: bool = False, refuse_symlink: bool = False,
                 suffix: str = ".tmp") -> None:
        self.path = Path(path)
        self.overwrite, self.fsync, self.refuse_symlink = overwrite, fsync, refuse_symlink
        check_target(self.path, overwrite, refuse_symlink)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_file(self.path, suffix)

    def commit(self) -> Path:
        if self.fsync:
            _fsync(self.tmp)
        check_target(self.path, self.overwrite, self.refuse_symlink)  # created meanwhile by someone else?
        if self.overwrite:
            os.replace(self.tmp, self.path)
        else:
            _publish_new(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass


def atomic_file(path: PathLike, *, overwrite: bool = True, fsync: bool = False, refuse_symlink: bool = False,
                suffix: str = ".tmp") -> AtomicFile:
    """``with atomic_file(path) as tmp:`` write ``tmp``; it replaces ``path`` when the block ends normally and is
    removed when it raises (``path`` untouched). Options as :class:`AtomicFile`."""
    return AtomicFile(path, overwrite=overwrite, fsync=fsync, refuse_symlink=refuse_symlink, suffix=suffix)


class AtomicDir(_Atomic):
    """A hidden temp folder ``tmp`` next to ``path`` that :meth:`commit` renames to ``path``.

    A symbolic link at ``path`` is always refused; an existing folder is replaced only with ``overwrite``.
    """

    def __init__(self, path: PathLike, *, overwrite: bool) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        check_target(self.path, overwrite, refuse_symlink=True)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} exists and is not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        normal_mode(self.tmp)  # mkdtemp makes it 0700

    def commit(self) -> Path:
        check_target(self.path, self.overwrite, refuse_symlink=True)
        old = None
        if self.path.exists():
            # a folder cannot be replaced by rename in one step: move the old one aside first
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
