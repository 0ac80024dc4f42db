"""CIFAR-10/100 read by torchvision's own classes (`engine.data.datasets` opens them through here).

Kept apart because importing torchvision takes over a second (it pulls in ``torch._dynamo``):
``--help``, ``--print-config``, config errors and digits runs never pay for it.
"""

import contextlib
import os
import pickle
from pathlib import Path
from typing import Callable, Union

from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets import cifar as cifar_module

from ..errors import UserError

PathLike = Union[str, os.PathLike]

_DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


# --- CIFAR files ---------------------------------------------------------------------------


def _without_checksums(entries):
    # torchvision's check_integrity(path, None) only tests that the file exists.
    return [[filename, None] for filename, _ in entries]


class _CIFAR10FilesOnly(datasets.CIFAR10):
    """torchvision's CIFAR10 checking that the files exist rather than their MD5 sums.

    For CIFAR-format data written locally (tests, subsets), which cannot match the
    official checksums. Reading, metadata and transforms are torchvision's, unchanged.
    """

    train_list = _without_checksums(datasets.CIFAR10.train_list)
    test_list = _without_checksums(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class _CIFAR100FilesOnly(datasets.CIFAR100):
    """`_CIFAR10FilesOnly` for CIFAR-100."""

    train_list = _without_checksums(datasets.CIFAR100.train_list)
    test_list = _without_checksums(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


class _CIFARBatchUnpickler(pickle.Unpickler):
    """Builds only what the official CIFAR python batches hold: dicts, lists, strings, bytes,
    numbers and numpy arrays. Any other global a file asks for (a crafted file's os.system,
    say) is refused before anything is built, naming the file."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3's pickle protocol 2 writes bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        source = getattr(self._file, "name", "a CIFAR batch file")
        raise UserError(
            f"refused to read {source}: it asks for {module}.{name}, which official CIFAR batches "
            f"never hold (a crafted or foreign file?); replace it with the official file"
        )

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._file = file


class _RestrictedPickle:
    """Stands in for the ``pickle`` module inside torchvision's CIFAR reader (see `_restricted_cifar_reads`)."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _CIFARBatchUnpickler(file, **kwargs).load()


@contextlib.contextmanager
def _restricted_cifar_reads():
    """torchvision reads CIFAR batches with plain ``pickle.load``; files whose MD5 is not checked
    (data.verify_checksum=false) are read with `_CIFARBatchUnpickler` instead, through the
    same torchvision code."""
    previous = cifar_module.pickle
    cifar_module.pickle = _RestrictedPickle
    try:
        yield
    finally:
        cifar_module.pickle = previous


_CLASSES = {
    ("cifar10", True): datasets.CIFAR10,
    ("cifar10", False): _CIFAR10FilesOnly,
    ("cifar100", True): datasets.CIFAR100,
    ("cifar100", False): _CIFAR100FilesOnly,
}


def _expected_files(cls) -> list:
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _mismatched_checksums(cls, folder: Path) -> list:
    """The files of ``folder`` whose MD5 differs from the official one torchvision lists."""
    from torchvision.datasets.utils import check_integrity

    entries = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    return [name for name, md5 in entries if not check_integrity(str(folder / name), md5)]


def _first_unreadable(cls, folder: Path, train: bool) -> Union[str, None]:
    """The first file of the split torchvision reads (then the metadata) that is not a CIFAR python batch."""
    names = [name for name, _ in (cls.train_list if train else cls.test_list)] + [cls.meta["filename"]]
    for name in names:
        try:
            with open(folder / name, "rb") as stream:
                batch = _CIFARBatchUnpickler(stream, encoding="latin1").load()
        except Exception:  # whatever a damaged file raises, this is the file
            return name
        if not isinstance(batch, dict):
            return name
    return None


def _unreadable(cls, folder: Path, train: bool, generic: str, error: BaseException) -> str:
    bad = _first_unreadable(cls, folder, train)
    where = f"{folder / bad} is not a CIFAR python batch" if bad else generic
    return f"{where} ({type(error).__name__}: {error})"


def open_cifar(
    dataset: str, root: PathLike, *, train: bool, transform: Callable, download: bool, verify_checksum: bool
) -> Dataset:
    """torchvision's CIFAR10/CIFAR100 of ``dataset`` under ``root``; a missing or damaged set is one `UserError`."""
    cls = _CLASSES[dataset, verify_checksum]
    name = _DISPLAY_NAMES[dataset]
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    unreadable = f"the {name} files in {folder} could not be read as CIFAR python batches"
    try:
        with contextlib.nullcontext() if verify_checksum else _restricted_cifar_reads():
            return cls(root, train=train, transform=transform, download=download)
    except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
        cause = error
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError) as error:
        # Only reachable with verify_checksum=False: the official files are checked first.
        raise UserError(_unreadable(cls, folder, train, unreadable, error)) from None

    if all((folder / filename).is_file() for filename in _expected_files(cls)):
        # With checksums on, torchvision refuses present files only when their MD5 differs
        # (and download=True then tries, and here failed, to fetch them again).
        if verify_checksum:
            bad = [str(folder / file) for file in _mismatched_checksums(cls, folder)] or [f"the files in {folder}"]
            raise UserError(
                f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not match the official {name} checksums "
                f"(a corrupted or incomplete "
                f"download?): delete the folder and download it again (data.download=true); "
                f"only for CIFAR-format data you generated yourself, set data.verify_checksum=false"
            )
        raise UserError(_unreadable(cls, folder, train, unreadable, cause))
    if download:
        failed, alternative = f"downloading {name} failed ({type(cause).__name__}: {cause}); ", ""
    else:
        failed, alternative = "", ", or set data.download=true to fetch it"
    raise UserError(
        f"{failed}{name} not found: expected the folder {folder} holding "
        f"{', '.join(_expected_files(cls))}. Get {cls.url} and extract it inside {root} (it unpacks "
        f"to {cls.base_folder}/){alternative}, or point data.root=... at the folder that contains "
        f"{cls.base_folder}"
    )
