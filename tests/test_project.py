"""The project's own promises: the README example runs, and the test command cannot pass empty."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


def readme_example(name, page="docs/losses.md"):
    text = (ROOT / page).read_text(encoding="utf-8")
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"{page} has no ```python block after '<!-- example: {name} -->'"
    return match.group(1)


def test_readme_drop_in_example_trains_with_ikl():
    torch.manual_seed(0)
    inputs = torch.randn(64, 8)
    labels = (inputs[:, 0] > 0).long() + 2 * (inputs[:, 1] > 0).long()  # 4 classes
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def attack(model, x, y):  # one FGSM step stands in for the user's PGD
        x = x.clone().requires_grad_()
        grad = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)[0]
        return (x + 0.1 * grad.sign()).detach()

    namespace = {
        "model": model,
        "loader": [(inputs[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)],
        "attack": attack,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "num_classes": 4,
    }
    before = [p.detach().clone() for p in model.parameters()]
    exec(compile(readme_example("ikl-drop-in"), "docs/losses.md", "exec"), namespace)

    prior = namespace["prior"]
    assert not torch.allclose(prior.prior, torch.full((4, 4), 0.25)), "the prior was never stepped"
    torch.testing.assert_close(prior.prior.sum(1), torch.ones(4))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved"


@pytest.mark.slow
def test_test_command_fails_when_no_test_is_collected(tmp_path):
    # A stand-in environment that sh/_venv.sh accepts as up to date, so no install runs.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would lose the venv
    python.chmod(0o755)
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + (ROOT / "setup.py").read_bytes())
    (venv / ".requirements.sha256").write_text(digest.hexdigest() + "\n")

    env = dict(os.environ, DKL_VENV=str(venv))
    command = ["bash", str(ROOT / "sh" / "test.sh"), "tests/losses/test_kd.py", "-k", "matches_no_test_at_all"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_tree_is_as_the_linter_and_formatter_leave_it(check):
    """pyproject.toml's ruff settings (pyflakes, pycodestyle, import order, bugbear; format at 120)."""
    result = subprocess.run([sys.executable, "-m", "ruff", *check, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"ruff {' '.join(check)} . found something; run `ruff check --fix .` and "
        f"`ruff format .`:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"
    )


def test_no_source_file_is_ignored_by_git():
    # A too-broad .gitignore pattern (once `data/`, which also matched engine/data/) keeps a
    # package out of every clone while the working tree that wrote it still passes its tests.
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "*.py", "*.yaml", "*.md", "*.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    # Inside a folder the repository holds (engine/, configs/, ...); runs/, data/, .venv/ hold none.
    source_folders = {path.split("/")[0] for path in tracked if "/" in path}
    ignored_sources = [path for path in listed if path.split("/")[0] in source_folders]
    assert not ignored_sources, f".gitignore hides source files from every clone: {ignored_sources[:10]}"
