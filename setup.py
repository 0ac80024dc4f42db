"""Installs the DKL/IKL packages so that they import from anywhere: ``pip install -e .``"""

import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
PACKAGES = ["losses", "models", "engine", "adv_training", "knowledge_distillation", "experiments"]
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "engine" / "__init__.py").read_text(), re.M).group(1)


TEST_ONLY = ("pytest", "ruff")
# Optional extras, `pip install .[NAME]`: their packages' lines of requirements.txt (which CI installs whole).
EXTRAS = {"robustbench": ("robustbench", "timm", "gdown", "geotorch", "torchdiffeq", "requests")}


def requirement_name(requirement):
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def read_requirements():
    """requirements.txt is the one list of dependencies; the test runner is not needed at run time."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [r for r in requirements if not r.startswith(TEST_ONLY)]


REQUIREMENTS = read_requirements()
OPTIONAL = {name for names in EXTRAS.values() for name in names}


setup(
    name="dkl",
    version=VERSION,
    description="Decoupled and Improved Kullback-Leibler divergence losses (DKL/IKL) "
    "for adversarial training and knowledge distillation",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=[p + suffix for p in PACKAGES for suffix in ("", ".*")]),
    install_requires=[r for r in REQUIREMENTS if requirement_name(r) not in OPTIONAL],
    extras_require={
        extra: [r for r in REQUIREMENTS if requirement_name(r) in names] for extra, names in EXTRAS.items()
    },
    license="MIT",
)
