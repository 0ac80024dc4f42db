"""The layering of the packages, read from their source: experiments -> the two tasks -> models,
losses -> engine. An import that points up, or a cycle between modules, fails here; so does a
run-folder file name spelt outside `engine.run_folder`."""

import ast
from pathlib import Path

from engine.config import where_and_how_keys

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # package -> the packages of this repository it may import
    "engine": set(),
    "losses": {"engine"},
    "models": {"engine"},
    "adv_training": {"engine", "losses", "models"},
    "knowledge_distillation": {"engine", "losses", "models"},
    "experiments": {"engine", "losses", "models", "adv_training", "knowledge_distillation"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(name: str, path: Path):
    """Every module of this repository that the module ``name`` (at ``path``) imports, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module]
            targets += [f"{targets[0]}.{alias.name}" for alias in node.names]  # `from package import module`
        else:
            continue
        yield from (target for target in targets if target.split(".")[0] in LAYERS)


def modules_of(root: Path):
    files = sorted(path for package in LAYERS for path in (root / package).rglob("*.py"))
    return {module_name(path, root): path for path in files}


def import_graph(modules):
    return {
        name: {t for t in imported_modules(name, path) if t in modules and t != name} for name, path in modules.items()
    }


def upward_imports(modules):
    return [
        f"{name} imports {target}"
        for name, targets in import_graph(modules).items()
        for target in sorted(targets)
        if target.split(".")[0] != name.split(".")[0] and target.split(".")[0] not in LAYERS[name.split(".")[0]]
    ]


def import_cycles(modules):
    edges, cycles, done = import_graph(modules), [], set()

    def visit(node, stack):
        stack.append(node)
        for target in sorted(edges[node]):
            if target in stack:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in done:
                visit(target, stack)
        stack.pop()
        done.add(node)

    for name in sorted(edges):
        if name not in done:
            visit(name, [])
    return cycles


def test_every_import_points_down_the_layers():
    upward = upward_imports(modules_of(ROOT))
    assert not upward, "imports that point up the layers: " + "; ".join(upward)


def test_no_module_imports_one_that_imports_it_back():
    cycles = import_cycles(modules_of(ROOT))
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    """The two tests above can fail: an engine module importing a task, and a pair importing each other."""
    for package, text in (("engine", "from adv_training import y\n"), ("adv_training", "import engine.x\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / ("x.py" if package == "engine" else "y.py")).write_text(text)
    modules = modules_of(tmp_path)
    assert "engine.x imports adv_training.y" in upward_imports(modules)
    assert "adv_training.y -> engine.x -> adv_training.y" in import_cycles(modules)


def source_files():
    return sorted(modules_of(ROOT).values())


RUN_FOLDER_NAMES = {
    "config.yaml",
    "config.previous.yaml",
    "environment.json",
    "metrics.jsonl",
    "tensorboard",
    "curves.png",
    "last.pt",
    "best.pt",
    "ema.pt",
    "results.json",
}


def test_run_folder_file_names_are_spelt_in_one_module():
    """A path built from a run-folder name (a string constant that is exactly the name, or an
    f-string starting with the epoch-file name) appears in engine/run_folder.py only."""
    found = []
    for path in source_files():
        if path == ROOT / "engine" / "run_folder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in RUN_FOLDER_NAMES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
            if (
                isinstance(node, ast.JoinedStr)
                and node.values
                and isinstance(node.values[0], ast.Constant)
                and str(node.values[0].value).startswith("ours-model-epoch")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} f-string {node.values[0].value!r}...")
    assert not found, "run-folder names outside engine/run_folder.py: " + "; ".join(found)


def test_the_knobs_that_do_not_change_a_result_are_declared_so():
    """The knobs whose declaration says changes_result=False, over both tasks: the list the sweep
    and the report used to keep by name (a knob added to a task must say which it is)."""
    from adv_training.config import ATConfig
    from knowledge_distillation.config import KDConfig

    assert set(where_and_how_keys(ATConfig)) | set(where_and_how_keys(KDConfig)) == {
        "name",
        "out_dir",
        "resume",
        "stop_after",
        "device",
        "dist_timeout",
        "allow_world_size_change",
        "paper_row",
        "data.root",
        "data.download",
        "data.num_workers",
        "data.test_batch_size",
        "data.loader",
        "teacher.checkpoint",
        "teacher.report_accuracy",
        "deterministic",
        "save_every",
        "compile",
        "channels_last",
        "optim.implementation",
        "data.verify_checksum",
        "generated.verify_hashes",
    }
