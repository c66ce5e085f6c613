"""The shared helpers: atomic file/folder writes (univs_engine.atomic) and mask normalisation (univs_engine.masks)."""
import errno
import os

import numpy as np
import pytest
import torch

from univs_engine import atomic
from univs_engine.atomic import AtomicDir, atomic_file, normal_mode
from univs_engine.masks import binary_mask, mask_array


class Boom(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ atomic_file
def test_success_replaces_the_target_through_a_hidden_sibling(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with atomic_file(dst) as tmp:
        assert tmp.parent == dst.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        assert tmp.is_file() and dst.read_bytes() == b"old"  # nothing visible under the final name yet
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new" and _names(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path, exc):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(exc):
        with atomic_file(dst) as tmp:
            tmp.write_bytes(b"half")
            raise exc()
    assert dst.read_bytes() == b"old" and _names(tmp_path) == ["out.bin"]


def test_a_writer_that_replaces_the_temp_itself_is_still_cleaned_up(tmp_path):
    dst = tmp_path / "sub" / "out.bin"  # missing folders are made
    with pytest.raises(Boom):
        with atomic_file(dst) as tmp:
            tmp.unlink()  # e.g. a library that writes its own file under that name
            tmp.write_bytes(b"x")
            raise Boom
    assert _names(tmp_path / "sub") == []


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    dst = tmp_path / "clip.mp4"
    dst.write_bytes(b"the user's")
    with pytest.raises(FileExistsError, match="clip.mp4 already exists"):
        atomic_file(dst, overwrite=False)
    assert _names(tmp_path) == ["clip.mp4"]
    # a file that appears while writing is not overwritten either
    other = tmp_path / "other.mp4"
    with pytest.raises(FileExistsError, match="other.mp4 already exists"):
        with atomic_file(other, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            other.write_bytes(b"theirs")
    assert other.read_bytes() == b"theirs" and _names(tmp_path) == ["clip.mp4", "other.mp4"]
    with atomic_file(tmp_path / "new.mp4", overwrite=False) as tmp:
        tmp.write_bytes(b"ours")
    assert (tmp_path / "new.mp4").read_bytes() == b"ours" and _names(tmp_path) == ["clip.mp4", "new.mp4", "other.mp4"]


def test_overwrite_false_publish_never_clobbers(tmp_path, monkeypatch):
    """The name can appear after the last check: the publish itself must refuse it."""
    monkeypatch.setattr(atomic, "check_target", lambda *a, **k: None)
    dst = tmp_path / "late"
    with pytest.raises(FileExistsError, match="late already exists"):
        with atomic_file(dst, overwrite=False) as tmp:
            tmp.write_bytes(b"ours")
            dst.write_bytes(b"theirs")
    assert dst.read_bytes() == b"theirs" and _names(tmp_path) == ["late"]


def test_overwrite_false_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(atomic.os, "link", no_links)
    with atomic_file(tmp_path / "a", overwrite=False) as tmp:
        tmp.write_bytes(b"a")
    assert (tmp_path / "a").read_bytes() == b"a" and _names(tmp_path) == ["a"]
    with pytest.raises(FileExistsError):
        with atomic_file(tmp_path / "b", overwrite=False) as tmp:
            (tmp_path / "b").write_bytes(b"theirs")
    assert (tmp_path / "b").read_bytes() == b"theirs" and _names(tmp_path) == ["a", "b"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "f") as tmp:
            assert tmp.stat().st_mode & 0o777 == file_mode
        with AtomicDir(tmp_path / "d", overwrite=False) as tmp:
            (tmp / "x").write_bytes(b"")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dir_mode
    private = tmp_path / "p"
    private.touch(mode=0o600)
    os.umask(umask)
    try:
        normal_mode(private)
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == file_mode


def test_fsync_only_when_asked(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    with atomic_file(tmp_path / "a") as tmp:
        tmp.write_bytes(b"a")
    assert synced == []
    with atomic_file(tmp_path / "b", fsync=True) as tmp:
        tmp.write_bytes(b"b")
    assert len(synced) == 1


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_symbolic_links(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(outside)
    with pytest.raises(FileExistsError, match="symbolic link"):
        atomic_file(link, refuse_symlink=True)
    with atomic_file(link) as tmp:  # the default replaces the link itself, never the file it points to
        tmp.write_text("new")
    assert not link.is_symlink() and link.read_text() == "new" and outside.read_text() == "keep"


def test_a_folder_in_the_way(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_file(tmp_path / "d")
    assert _names(tmp_path) == ["d"]


def test_atomic_dir_replaces_or_refuses_and_aborts_cleanly(tmp_path):
    dst = tmp_path / "seq"
    with AtomicDir(dst, overwrite=False) as tmp:
        (tmp / "1.png").write_bytes(b"1")
    with pytest.raises(FileExistsError, match="seq already exists"):
        AtomicDir(dst, overwrite=False)
    with pytest.raises(Boom):
        with AtomicDir(dst, overwrite=True) as tmp:
            (tmp / "2.png").write_bytes(b"2")
            raise Boom
    assert _names(dst) == ["1.png"] and _names(tmp_path) == ["seq"]
    with AtomicDir(dst, overwrite=True) as tmp:
        (tmp / "2.png").write_bytes(b"2")
    assert _names(dst) == ["2.png"] and _names(tmp_path) == ["seq"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        AtomicDir(tmp_path / "file", overwrite=True)


# ------------------------------------------------------------------------------------------ binary_mask
def test_mask_dtypes():
    b = np.array([[True, False], [False, True]])
    assert binary_mask(b).dtype == np.bool_ and binary_mask(b).tolist() == b.tolist()
    assert binary_mask(np.array([[0, 255], [3, 0]], np.uint8)).tolist() == [[False, True], [True, False]]
    assert binary_mask(np.array([[0.2, 0.6], [0.5, 0.51]], np.float32)).tolist() == [[False, True], [False, True]]
    assert binary_mask([[0, 1], [1, 0]]).tolist() == [[False, True], [True, False]]  # plain lists
    t = torch.tensor([[0.9, 0.1]], requires_grad=True)
    assert binary_mask(t).tolist() == [[True, False]]  # torch, even with a gradient
    assert binary_mask(np.array([[0.2, 0.6]]), floats=0.1).tolist() == [[True, True]]
    assert binary_mask(np.array([[0.2, -0.6, 0.0]]), floats="nonzero").tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="logits of object 3 must be bool or integer.*float32.*threshold"):
        binary_mask(np.zeros((2, 2), np.float32), what="logits of object 3", floats="refuse")
    assert binary_mask(np.array([[2, 0]], np.int16), floats="refuse").tolist() == [[True, False]]


def test_mask_nan_is_refused_naming_the_mask():
    m = np.ones((3, 4), np.float32)
    m[1, 2] = np.nan
    with pytest.raises(ValueError, match="^mask of object 7 contains NaN$"):
        binary_mask(m, 3, 4, what="mask of object 7")
    assert binary_mask(m, allow_nan=True).sum() == 11  # NaN compares as background when allowed


def test_mask_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"^scribble of object 2 has size 10x8, which does not match the video "
                                         r"frames \(12x9\); resize"):
        binary_mask(np.ones((8, 10), bool), 9, 12, what="scribble of object 2")
    with pytest.raises(ValueError, match=r"mask must be a 2-D \[H, W\] array, got shape \(2, 3, 4\)"):
        binary_mask(np.ones((2, 3, 4), bool), 3, 4)


def test_mask_leading_singleton_is_squeezed():
    m = np.zeros((1, 3, 4), np.uint8)
    m[0, 1, 1] = 1
    out = binary_mask(m, 3, 4)
    assert out.shape == (3, 4) and out.sum() == 1 and out[1, 1]
    with pytest.raises(ValueError, match="2-D"):
        binary_mask(m, squeeze=False)
    assert mask_array(torch.zeros(1, 3, 4, dtype=torch.uint8)).dtype == np.uint8  # mask_array keeps the dtype


def test_mask_floats_option_is_checked():
    with pytest.raises(ValueError, match="floats must be"):
        binary_mask(np.zeros((2, 2), np.float32), floats="half")
