r"""Generated training images (Wang et al. 2023's diffusion data) stored on disk.

**On disk.** Wang et al. publish their generated images as ``.npz`` archives holding
``image`` (N x 32 x 32 x 3, uint8, HWC) and ``label`` (N integers); 20M and 50M come in
parts. `prepare_generated` converts them once into a folder of plain NumPy files,

* ``images.npy``: all images, N x 32 x 32 x 3 uint8, the parts in the order given;
* ``labels.npy``: N labels (uint8 for up to 256 classes);
* ``manifest.json``: the count, the classes, the per-class counts, the size and sha256 of
  both files and of every source part. It is written last: a folder with a manifest is
  complete.

It streams each part in chunks, so memory does not grow with N (a 20M part is 30 GB);
every file is written to a temporary name and renamed. `open_generated` checks the folder
against its manifest and opens ``images.npy`` with ``np.load(mmap_mode="r")``: training
reads only the images it draws, and memory stays flat for 50M images (154 GB).
"""

import hashlib
import json
import mmap
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Tuple, Union

import numpy as np

from engine.errors import UserError
from engine.file_io import atomic_write_text, remove_stale_temporaries, sha256_file, write_atomically

PathLike = Union[str, Path]

IMAGE_SHAPE = (32, 32, 3)
MANIFEST, IMAGES, LABELS = "manifest.json", "images.npy", "labels.npy"
FORMAT_VERSION = 1
REFERENCE_EPOCH_IMAGES = 50_000  # Wang et al.: an epoch is ceil(50,000 / batch) batches
CHUNK_IMAGES = 16_384  # images converted at a time (48 MiB)
_PREPARE_HINT = "python -m adv_training.prepare_generated --out DIR PART.npz [PART.npz ...]"


# --- reading the published .npz parts ----------------------------------------------------


def _npy_header(stream: BinaryIO) -> Tuple[Tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f"unsupported .npy version {version}")


@dataclass
class _Part:
    path: Path
    count: int
    image_dtype: np.dtype


def _member(archive: zipfile.ZipFile, key: str, path: Path) -> str:
    name = f"{key}.npy"
    if name not in archive.namelist():
        found = ", ".join(sorted(n[:-4] for n in archive.namelist() if n.endswith(".npy"))) or "nothing"
        raise UserError(f"{path} holds no '{key}' array (found: {found}); Wang et al.'s files hold 'image' and 'label'")
    return name


def _inspect_part(path: Path) -> _Part:
    """Check one part's arrays from their headers alone (no image is read)."""
    if not path.is_file():
        raise UserError(f"generated-data part {path} not found")
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open(_member(archive, "image", path)) as stream:
                image_shape, image_fortran, image_dtype = _npy_header(stream)
                image_data = archive.getinfo("image.npy").file_size - stream.tell()
            with archive.open(_member(archive, "label", path)) as stream:
                label_shape, _, label_dtype = _npy_header(stream)
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error, OSError) as error:
        raise UserError(f"{path} is not a readable .npz archive (truncated or damaged?): {error}") from None
    if len(image_shape) != 4 or tuple(image_shape[1:]) != IMAGE_SHAPE:
        raise UserError(f"{path}: 'image' has shape {tuple(image_shape)}; expected (N, 32, 32, 3) (HWC images)")
    if image_dtype != np.uint8:
        raise UserError(f"{path}: 'image' has dtype {image_dtype}; expected uint8 pixels in 0..255")
    if image_fortran:
        raise UserError(f"{path}: 'image' is stored in Fortran order; expected C order")
    image_bytes = int(np.prod(IMAGE_SHAPE))
    if image_data != image_shape[0] * image_bytes:
        raise UserError(
            f"{path}: 'image' holds {image_data // image_bytes:,} of the {image_shape[0]:,} images its "
            f"header declares (an incomplete file?)"
        )
    if not np.issubdtype(label_dtype, np.integer) or tuple(label_shape) != (image_shape[0],):
        raise UserError(
            f"{path}: 'label' has shape {tuple(label_shape)} and dtype {label_dtype}; expected "
            f"{image_shape[0]} integers, one per image"
        )
    return _Part(path, int(image_shape[0]), image_dtype)


def _read_labels(part: _Part, num_classes: int) -> np.ndarray:
    try:
        with zipfile.ZipFile(part.path) as archive, archive.open("label.npy") as stream:
            labels = np.lib.format.read_array(stream)
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error, OSError) as error:
        raise UserError(f"{part.path}: its labels could not be read (truncated or damaged?): {error}") from None
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{part.path}: labels range over {labels.min()}..{labels.max()}, outside 0..{num_classes - 1} "
            f"({num_classes} classes): is this the data of another dataset?"
        )
    return labels


def _stream_images(part: _Part, chunk_images: int) -> Iterator[bytes]:
    """The raw bytes of ``part``'s images, ``chunk_images`` images at a time."""
    image_bytes = int(np.prod(IMAGE_SHAPE))
    try:
        with zipfile.ZipFile(part.path) as archive, archive.open("image.npy") as stream:
            _npy_header(stream)
            left = part.count
            while left:
                wanted = min(left, chunk_images) * image_bytes
                chunk = stream.read(wanted)
                if len(chunk) != wanted:
                    raise EOFError(f"{part.count - left + len(chunk) // image_bytes} of {part.count} images present")
                left -= wanted // image_bytes
                yield chunk
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error, OSError) as error:
        raise UserError(
            f"{part.path}: its images could not be read to the end (truncated or damaged?): {error}"
        ) from None


class _HashingWriter:
    """A write-only stream that also hashes and counts what passes through it."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.size = stream, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.stream.write(data)


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int64)


def prepare_generated(
    parts: Sequence[PathLike],
    out_dir: PathLike,
    num_classes: int,
    *,
    chunk_images: int = CHUNK_IMAGES,
    show_progress: bool = True,
) -> dict:
    """Validate the ``.npz`` ``parts`` and write them as one prepared folder; return its manifest.

    Every part is checked (arrays, shapes, dtypes, label range) before anything is written.
    Memory holds one chunk of images and the labels (one byte per image), never a whole part.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if not parts:
        raise UserError("no generated-data part given")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    if (out_dir / MANIFEST).exists():
        raise UserError(f"{out_dir} already holds a prepared set ({MANIFEST}); choose another --out or delete it")
    paths = [Path(p) for p in parts]
    if len(set(p.resolve() for p in paths)) != len(paths):
        raise UserError("a part is given twice")
    inspected = [_inspect_part(p) for p in paths]
    count = sum(part.count for part in inspected)
    if count == 0:
        raise UserError("the parts hold no image")
    labels = np.concatenate([_read_labels(part, num_classes).astype(_label_dtype(num_classes)) for part in inspected])
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir, [IMAGES, LABELS, MANIFEST])

    total_bytes = sum(p.stat().st_size for p in paths) + count * int(np.prod(IMAGE_SHAPE))
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="preparing", disable=not show_progress) as bar:
        sources = [
            {"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p, bar), "count": part.count}
            for p, part in zip(paths, inspected)
        ]
        images_record = {}

        def write_images(stream):
            writer = _HashingWriter(stream)
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": (count, *IMAGE_SHAPE),
            }
            np.lib.format.write_array_header_1_0(writer, header)
            for part in inspected:
                for chunk in _stream_images(part, chunk_images):
                    writer.write(chunk)
                    bar.update(len(chunk))
            images_record.update(file=IMAGES, bytes=writer.size, sha256=writer.digest.hexdigest())

        write_atomically(out_dir / IMAGES, "wb", write_images)
        labels_record = {}

        def write_labels(stream):
            writer = _HashingWriter(stream)
            np.lib.format.write_array(writer, labels, allow_pickle=False)
            labels_record.update(
                file=LABELS, bytes=writer.size, sha256=writer.digest.hexdigest(), dtype=str(labels.dtype)
            )

        write_atomically(out_dir / LABELS, "wb", write_labels)
    manifest = {
        "format": FORMAT_VERSION,
        "count": count,
        "num_classes": num_classes,
        "image_shape": list(IMAGE_SHAPE),
        "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        "images": images_record,
        "labels": labels_record,
        "sources": sources,
    }
    atomic_write_text(json.dumps(manifest, indent=1) + "\n", out_dir / MANIFEST)
    return manifest


# --- the prepared folder -------------------------------------------------------------------


def memory_map_images(path: PathLike) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``, advised for random access.

    Training reads scattered images. Left to its default, the kernel reads ahead around every
    page fault (tens of pages for one 3 KB image): drawing 358 random images from a 20M-image
    map took 2.3 s instead of 2.5 ms with MADV_RANDOM (measured with bench/generated_loader.py's
    sparse file).
    """
    images = np.load(path, mmap_mode="r", allow_pickle=False)
    mapping = getattr(images, "_mmap", None)  # np.memmap's mmap object
    if mapping is not None and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return images


@dataclass
class GeneratedSet:
    """A prepared folder, opened: ``images`` is a read-only memory map, ``labels`` in memory.

    Pickled (a DataLoader worker started by spawn) it travels as its folder and reopens the
    map, rather than copying the images.
    """

    folder: Path
    images: np.ndarray
    labels: np.ndarray
    manifest: dict

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        return {
            "folder": self.folder,
            "labels": self.labels,
            "manifest": self.manifest,
            "images_file": Path(self.images.filename),
        }

    def __setstate__(self, state: dict) -> None:
        self.folder, self.labels, self.manifest = state["folder"], state["labels"], state["manifest"]
        self.images = memory_map_images(state["images_file"])


def open_generated(folder: PathLike, num_classes: int, verify_hashes: bool = False) -> GeneratedSet:
    """Open a folder written by `prepare_generated`, checked against its manifest.

    Sizes, shapes and the number of classes are always checked (cheap); ``verify_hashes``
    also recomputes both files' sha256 (reads everything once).
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        why = "not found" if not folder.is_dir() else f"holds no {MANIFEST} (not prepared, or preparing stopped)"
        raise UserError(f"generated data {folder} {why}: prepare Wang et al.'s .npz files first with {_PREPARE_HINT}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        count, classes = int(manifest["count"]), int(manifest["num_classes"])
        if manifest["format"] != FORMAT_VERSION:
            raise ValueError(f"format {manifest['format']}, this code reads {FORMAT_VERSION}")
        files = {
            key: (folder / manifest[key]["file"], int(manifest[key]["bytes"]), manifest[key]["sha256"])
            for key in ("images", "labels")
        }
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{manifest_path} is not a readable manifest ({error}): prepare the data again with {_PREPARE_HINT}"
        ) from None
    if classes != num_classes:
        raise UserError(
            f"the generated data in {folder} has {classes} classes and this run's dataset "
            f"{num_classes}: point data.generated.path at the set generated for this dataset"
        )
    for path, expected_bytes, expected_sha256 in files.values():
        size = path.stat().st_size if path.is_file() else None
        if size != expected_bytes:
            found = "it is missing" if size is None else f"it has {size}"
            raise UserError(
                f"{path} does not match {MANIFEST} ({expected_bytes} bytes expected, {found}): "
                f"prepare the data again with {_PREPARE_HINT}"
            )
        if verify_hashes:
            if sha256_file(path) != expected_sha256:
                raise UserError(f"{path} does not match the sha256 in {MANIFEST}: prepare the data again")
    try:
        images = memory_map_images(files["images"][0])
        labels = np.load(files["labels"][0], allow_pickle=False)
    except ValueError as error:  # a damaged .npy header
        raise UserError(f"{folder}: the prepared files could not be read ({error}): prepare the data again") from None
    if images.shape != (count, *IMAGE_SHAPE) or images.dtype != np.uint8 or labels.shape != (count,):
        raise UserError(
            f"{folder}: images {images.shape} {images.dtype} and labels {labels.shape} do not match "
            f"{MANIFEST} ({count} images): prepare the data again"
        )
    return GeneratedSet(folder, images, labels, manifest)


# --- mixing real and generated images ------------------------------------------------------
