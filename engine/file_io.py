"""Reading and writing files that hold tensors: atomically, and never executing code."""

import contextlib
import errno
import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Union

import torch

from .errors import UserError

PathLike = Union[str, os.PathLike]


class WriteError(UserError, OSError):
    """A file or folder could not be written (full disk, read-only file system, no permission)."""


_CAUSES = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into one `WriteError` line naming it and the cause."""
    try:
        yield
    except WriteError:
        raise
    except Exception as error:
        # torch.save's zip writer reports a full disk as a RuntimeError whose context is the OSError.
        os_error = error
        while os_error is not None and not isinstance(os_error, OSError):
            os_error = os_error.__cause__ or os_error.__context__
        if os_error is None:
            raise
        cause = _CAUSES.get(os_error.errno, os_error.strerror or type(os_error).__name__)
        raise WriteError(
            f"could not write {path}: {cause}; free space or choose a writable out_dir, then run again "
            f"(with resume=true if the run had started: the previous files are intact)"
        ) from None


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # `write_atomically`'s names: .NAME.XXXXXXXX.tmp


def write_atomically(path: PathLike, mode: str, write: Callable[[Any], None], **open_kwargs) -> Path:
    """Write to a temporary file in the same folder, flush it to disk, then rename it into place.

    A crash or a full disk during the write leaves the previous file intact: readers see
    either the old file or the new one, never half of one. The file gets the permissions a
    plain write would give it (the umask's), not the temporary file's private ones. A
    temporary file left by a killed process is removed by `remove_stale_temporaries`.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, mode, **open_kwargs) as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o666 & ~_UMASK)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return path


def remove_stale_temporaries(folder: PathLike, names: Optional[List[str]] = None) -> List[Path]:
    """Delete the temporary files a killed `write_atomically` left in ``folder``; return them.

    With ``names``, only the temporaries of those files (a shared folder, where another
    process may be writing its own files right now); without, every one (a run folder,
    which belongs to one run).
    """
    folder = Path(folder)
    stale = [p for p in folder.iterdir() if p.is_file() and TEMPORARY.match(p.name)] if folder.is_dir() else []
    if names is not None:
        stale = [p for p in stale if any(p.name.startswith(f".{name}.") for name in names)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def sha256_file(path: PathLike, progress=None) -> str:
    """The sha256 of a file, read in 1 MiB blocks (``progress.update(bytes)`` after each, if given)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
            if progress is not None:
                progress.update(len(block))
    return digest.hexdigest()


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` with the write-then-rename guarantee (see `write_atomically`)."""
    return write_atomically(path, "wb", lambda stream: torch.save(obj, stream))


def atomic_write_text(text: str, path: PathLike) -> Path:
    """A text file (JSON, YAML) with the same write-then-rename guarantee."""
    return write_atomically(path, "w", lambda stream: stream.write(text), encoding="utf-8")


class CheckpointError(UserError, ValueError):
    """A checkpoint file could not be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """There is no file at the given path."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file pickles objects other than tensors and plain containers; it was not loaded."""


def load_file(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``: a checkpoint is data, never code.

    The one routine that reads tensor files in this code base. A missing file, a file
    that is not a PyTorch checkpoint, and a pickle that would import or run code (refused
    before anything in it executes) each raise a `CheckpointError` with one clear sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if not found:  # not a refused object: the file is simply not a checkpoint
            reason = re.search(r"WeightsUnpickler error: (.+)", str(error))
            detail = reason.group(1).strip() if reason else str(error).splitlines()[0]
            raise CheckpointError(
                f"{path} could not be read as a PyTorch checkpoint ({detail}); nothing in it was run"
            ) from None
        culprit = f" (refused global: {found.group(1)})"
        raise UnsafeCheckpointError(
            f"{path} is not a plain tensor checkpoint: it pickles objects other than tensors and containers, "
            f"whose loading could run code, so it was refused and NOT executed{culprit}. If you trust it, "
            f"load it yourself and re-save only the state dict (torch.save(model.state_dict(), ...))."
        ) from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"{path} could not be read as a PyTorch checkpoint: {error}") from None


def require_finite(state: Any, source: PathLike) -> None:
    """Refuse a state dict (or a nest of them) holding NaN or inf, naming ``source`` and the first bad entry.

    A run that diverged can save such weights; loading them would only produce NaN later,
    far from the cause.
    """

    def entries(obj, prefix=""):
        if isinstance(obj, torch.Tensor):
            yield prefix, obj
        elif isinstance(obj, dict):
            for key, value in obj.items():
                yield from entries(value, f"{prefix}.{key}" if prefix else str(key))

    for key, tensor in entries(state):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{source}: entry {key!r} holds NaN or inf, so these weights are unusable (saved from a diverged "
                f"run?); use an earlier checkpoint"
            )
