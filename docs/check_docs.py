"""Does the quickstart still print the table the docs show?

    python docs/check_docs.py                 # runs `bash sh/quickstart.sh --compare` (minutes), then compares
    python docs/check_docs.py --output FILE   # compares a saved output instead ('-': standard input)

Every quickstart table in README.md and docs/*.md is compared with the one printed, by the
method, clean, PGD-20 and AutoAttack columns (not wall time, not the run folder's timestamp).
Exit status 0 when they agree, 1 when a table differs (each difference is printed), 2 when no
table is found. `sh/check_docs.sh` runs this with the project's interpreter.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "Digits (8x8 images), Linf eps 0.2; clean and PGD-20 on the 450 test images. Run folders under"
ROW = re.compile(r"^(standard training|TRADES|IKL-AT)\s+([\d.]+)%\s+([\d.]+)%\s+([\d.]+)%\s+\d+\s+[\d.]+ min\s*$")


def quickstart_tables(text):
    """Each quickstart table in ``text``: a list of (method, clean, PGD-20, AutoAttack) rows."""
    tables = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(HEADER):
            rows = []
            for following in lines[i + 2 :]:  # after the header line and the column names
                match = ROW.match(following.strip())
                if not match:
                    break
                rows.append(match.groups())
            tables.append(rows)
    return tables


def differences(output, pages):
    """What differs between the table in ``output`` and each table of ``pages`` ({name: text})."""
    printed = quickstart_tables(output)
    if not printed or not printed[-1]:
        return ["the output holds no quickstart table"]
    printed = printed[-1]
    shown = [(name, table) for name, text in pages.items() for table in quickstart_tables(text)]
    if not shown:
        return ["the docs show no quickstart table"]
    found = []
    for name, table in shown:
        if table != printed:
            found.append(f"{name}: shows {table}, the quickstart printed {printed}")
    return found


def doc_pages(root=ROOT):
    files = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return {str(f.relative_to(root)): f.read_text(encoding="utf-8") for f in files if f.exists()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="a saved quickstart output to compare ('-' for standard input)")
    args = parser.parse_args(argv)
    if args.output == "-":
        output = sys.stdin.read()
    elif args.output:
        output = Path(args.output).read_text(encoding="utf-8")
    else:
        result = subprocess.run(
            ["bash", str(ROOT / "sh" / "quickstart.sh"), "--compare"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        output = result.stdout
        print(output, end="")
        if result.returncode != 0:
            print(f"error: the quickstart failed (exit status {result.returncode})", file=sys.stderr)
            return 2
    found = differences(output, doc_pages())
    if found and found[0].startswith(("the output holds no", "the docs show no")):
        print(f"error: {found[0]}", file=sys.stderr)
        return 2
    for line in found:
        print(f"differs: {line}", file=sys.stderr)
    if not found:
        print("the docs show the table the quickstart prints")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
