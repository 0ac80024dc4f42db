"""Atomic writes and safe reads of tensor files."""
import errno
import os
import pickle
import stat
import tempfile

import pytest
import torch

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
from engine.errors import UserError


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


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                         (errno.EDQUOT, "disk quota exceeded"), (errno.EIO, "Input/output error")])
def test_write_errors_name_the_file_and_the_cause(code, cause, tmp_path, monkeypatch):
    def refusing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    with pytest.raises(WriteError, match=f"could not write {tmp_path / 'x.json'}: {cause}"):
        atomic_write_text("{}", tmp_path / "x.json")


def test_written_files_get_the_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        assert stat.S_IMODE(atomic_write_text("{}", tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(atomic_save({}, tmp_path / "b.pt").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    stale = tmp_path / ".last.pt.k2j4xq_1.tmp"
    stale.write_bytes(b"half")
    kept = [tmp_path / "last.pt", tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".a.b.tmp"]
    for path in kept:
        path.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
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
