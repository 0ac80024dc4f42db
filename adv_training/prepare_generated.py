"""Convert Wang et al.'s generated-image .npz files, once, into a folder training reads by memory map."""

import argparse
import sys
from typing import List, Optional

from engine.cli import command
from engine.data import num_classes

from .generated.store import IMAGES, LABELS, MANIFEST, prepare_generated

DESCRIPTION = f"""\
Validate and convert generated CIFAR images (Wang et al. 2023, "Better Diffusion Models
Further Improve Adversarial Training") into the folder that generated-data training reads
(data.generated.path in the configs).

Input: one or more .npz files as Wang et al. publish them
(https://huggingface.co/datasets/P2333/DM-Improves-AT), each holding
  image  N x 32 x 32 x 3 uint8 (HWC pixels)
  label  N integer class labels
The 1M sets are one file (cifar10/1m.npz, cifar100/1m.npz); CIFAR-10 20M comes in 2 parts
(20m_part1.npz, 20m_part2.npz) and 50M sets in 4 (50m_part1..4.npz): give all of a set's
parts, in order, in one command.

Output, in --out:
  {IMAGES}      all images, N x 32 x 32 x 3 uint8, the parts concatenated in the order given
  {LABELS}      the N labels (uint8)
  {MANIFEST}   count, classes, per-class counts, size and sha256 of both files and of every
                 source part; written last, so a folder with a manifest is complete
Training opens {IMAGES} as a memory map: memory does not grow with N. The output takes
3,072 bytes per image (1M: 3.1 GB, 20M: 61 GB, 50M: 154 GB) besides the sources.

Every part is checked (arrays present, shapes, dtypes, label range, complete data) before
anything is written, and conversion streams each part in chunks: memory stays small
whatever the part's size. Files are written under temporary names and renamed.
"""


@command(also=(OSError,))  # OSError: an unreadable part, an unwritable --out
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adv_training.prepare_generated",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("parts", nargs="+", metavar="PART.npz", help="the .npz file(s) of one generated set, in order")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must not hold a manifest)")
    parser.add_argument(
        "--dataset",
        required=True,
        choices=("cifar10", "cifar100"),
        help="the dataset the images were generated for (sets the number of classes)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    manifest = prepare_generated(args.parts, args.out, num_classes(args.dataset), show_progress=not args.quiet)
    print(f"wrote {manifest['count']:,} images of {manifest['num_classes']} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
