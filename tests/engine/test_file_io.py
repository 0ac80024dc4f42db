"""Atomic writes and safe reads of tensor files."""

import errno
import os
import pickle
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from engine.errors import UserError
from engine.file_io import (
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    WriteError,
    atomic_save,
    atomic_write_text,
    load_file,
    remove_stale_temporaries,
    require_finite,
)


def test_round_trip(tmp_path):
    path = atomic_save({"w": torch.arange(3.0), "epoch": 4}, tmp_path / "sub" / "ckpt.pt")
    loaded = load_file(path)
    assert loaded["epoch"] == 4 and torch.equal(loaded["w"], torch.arange(3.0))
    assert atomic_write_text("hello\n", tmp_path / "a.txt").read_text() == "hello\n"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = atomic_save({"w": torch.zeros(2)}, tmp_path / "last.pt")
    before = path.read_bytes()

    def failing_save(obj, stream):
        stream.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(WriteError, match=f"could not write {path}: disk full"):
        atomic_save({"w": torch.ones(2)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "code, cause",
    [
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EIO, "Input/output error"),
    ],
)
def test_write_errors_name_the_file_and_the_cause(code, cause, tmp_path, monkeypatch):
    def refusing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'x.json'}: {cause}"):
        atomic_write_text("{}", tmp_path / "x.json")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_umask_permissions(umask, mode, tmp_path):
    """As a plain open() would, not mkstemp's private 0600 (the umask is read once, at import)."""
    script = (
        f"import os; os.umask({umask}); from engine.file_io import atomic_save, atomic_write_text; "
        f"atomic_write_text('{{}}', {str(tmp_path / 'a.json')!r}); atomic_save({{}}, {str(tmp_path / 'b.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=Path(__file__).resolve().parents[2])
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_real_full_disk_inside_torch_save_is_one_line(tmp_path, monkeypatch):
    """/dev/full fails every write with ENOSPC, which torch's zip writer reports as a RuntimeError."""
    path = atomic_save({"w": torch.zeros(2)}, tmp_path / "last.pt")
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        os,
        "fdopen",
        lambda handle, mode, **kw: (os.close(handle), real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, **kw))[1],
    )
    with pytest.raises(WriteError, match=f"could not write {path}: disk full"):
        atomic_save({"w": torch.ones(1000)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    stale = tmp_path / ".last.pt.k2j4xq_1.tmp"
    stale.write_bytes(b"half")
    kept = [tmp_path / "last.pt", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".a.b.tmp"]
    for path in kept:
        path.write_bytes(b"x")
    other = tmp_path / ".state.pt.zzzzzzzz.tmp"
    other.write_bytes(b"being written by someone else")
    assert remove_stale_temporaries(tmp_path, ["last.pt"]) == [stale]  # only the named files' temporaries
    assert other.exists()
    assert remove_stale_temporaries(tmp_path) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as stream:
        pickle.dump({"model": _Payload(str(marker))}, stream, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="not a plain tensor checkpoint.*NOT executed"):
        load_file(path)
    assert not marker.exists()
    with open(path, "wb") as stream:  # newer pickle protocols are refused at their first unknown opcode
        pickle.dump({"model": _Payload(str(marker))}, stream, protocol=4)
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        load_file(path)
    assert not marker.exists()


def test_missing_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint file at"):
        load_file(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_file(tmp_path / "text.pt")
    assert issubclass(CheckpointError, UserError) and issubclass(CheckpointNotFoundError, FileNotFoundError)


def test_require_finite_names_the_source_and_the_first_bad_entry():
    require_finite({"a": torch.ones(2), "n": torch.tensor(3)}, "ok.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt: entry 'model.b' holds NaN or inf"):
        require_finite({"model": {"a": torch.ones(2), "b": torch.tensor([1.0, float("inf")])}}, "bad.pt")
