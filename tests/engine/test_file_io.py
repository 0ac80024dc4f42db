"""Atomic writes and safe reads of tensor files."""
import pickle

import pytest
import torch

from engine.file_io import (
    CheckpointError,
    CheckpointNotFoundError,
    UnsafeCheckpointError,
    atomic_save,
    atomic_write_text,
    load_file,
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
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"w": torch.ones(2)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


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
