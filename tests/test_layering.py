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


# Every knob of both tasks is one of two kinds. WHERE_AND_HOW: declared changes_result=False (where or how
# a run runs; the sweep and the report leave them out when they compare what runs trained). RESULT_KNOBS:
# the rest, which change what a run trains. A knob added to a task fails the test below until it is listed
# in one of the two, so that whoever adds it says which kind it is (the declaration's default,
# changes_result=True, would otherwise pass unread).
WHERE_AND_HOW = {
    "name",
    "out_dir",
    "resume",
    "stop_after",
    "device",
    "dist_timeout",
    "allow_world_size_change",
    "paper_row",
    "data.root",
    "data.lists",
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
RESULT_KNOBS = {  # section: its knobs ("": the top level), over both tasks
    "": "batchnorm_groups bf16_min_eps epochs label_smoothing label_smoothing_form logit_standardization method precision "
    "seed sync_bn",
    "data": "aug_weight augment augmented_views batch_size dataset drop_last eval_list long_tail normalize padding_mode "
    "rotate_degrees validation_per_class validation_size",
    "model": "arch depth preprocess view_batchnorm widen_factor",
    "student": "arch",
    "teacher": "arch",
    "optim": "batchnorm_weight_decay decay first_epoch_lr lr milestones momentum nesterov schedule warmup_epochs "
    "weight_decay",
    "attack": "alpha beta budget eps_ramp epsilon eval_mode freeze_bn_stats norm random_start step_size steps",
    "eval": "epsilon every num_examples objective pgd_steps select split step_size",
    "awp": "enabled gamma proxy_lr warmup",
    "ema": "average_buffers enabled start_epoch tau warmup_fraction",
    "epoch_average": "enabled end start tau",
    "generated": "epoch_images path rotate_degrees unsup_fraction",
    "ikl": "alpha beta ce_weight class_prior gamma prior_temperature temperature warmup",
    "trades": "beta",
    "mart": "beta",
    "lbgat": "beta natural_arch",
    "dajat": "js_weight",
    "dist": "beta ce_weight gamma kd_weight temperature",
    "mlkd": "ce_weight kd_weight temperature",
    "ctkd": "ce_weight curriculum_epochs kd_weight max_reversal temperature_span temperature_start",
    "las_at": "clean_weight clip_grad_norm epsilons interval lookahead_label_smoothing policy_lr policy_momentum "
    "policy_weight_decay reward_epsilon reward_restarts reward_step_size reward_steps robust_weight step_sizes steps",
    "kd": "ce_weight kd_weight temperature",
    "dkd": "alpha beta ce_weight temperature warmup",
    "at": "ce_weight feat_weight p",
    "crd": "ce_weight feat_dim feat_weight mode nce_k nce_momentum nce_temperature",
    "fitnet": "ce_weight feat_weight hint_layer",
    "kdsvd": "ce_weight feat_weight k",
    "nst": "ce_weight feat_weight",
    "ofd": "ce_weight feat_weight kernel_size",
    "pkt": "ce_weight feat_weight",
    "reviewkd": "ce_weight max_mid_channel reviewkd_weight stu_preact warmup",
    "rkd": "angle_weight ce_weight distance_weight eps feat_weight squared",
    "sp": "ce_weight feat_weight",
    "vid": "ce_weight eps feat_weight init_pred_var learn_variance",
}


def test_the_knobs_that_do_not_change_a_result_are_declared_so():
    """The knobs whose declaration says changes_result=False, over both tasks: the list the sweep
    and the report used to keep by name; and every other knob listed as one that changes a result."""
    from adv_training.config import ATConfig
    from engine.config import flat_dict, to_dict
    from knowledge_distillation.config import KDConfig

    assert set(where_and_how_keys(ATConfig)) | set(where_and_how_keys(KDConfig)) == WHERE_AND_HOW
    results = {f"{section}.{knob}".lstrip(".") for section, knobs in RESULT_KNOBS.items() for knob in knobs.split()}
    assert not results & WHERE_AND_HOW
    knobs = set(flat_dict(to_dict(ATConfig()))) | set(flat_dict(to_dict(KDConfig())))
    assert knobs - WHERE_AND_HOW - results == set(), (
        "knobs of no declared kind: declare changes_result=False (where or how a run runs) and list them in "
        "WHERE_AND_HOW, or list them in RESULT_KNOBS (they change what a run trains)"
    )
    assert results - knobs == set(), "RESULT_KNOBS lists knobs that no task has"


# A script is a module run as a file from its own folder (`python eval.py`, the authors' way in), which
# therefore puts the repository on sys.path before its imports (and marks them `noqa: E402`). One
# module of the packages is one; everything it shares lives in a library module (`target`, `resumable`).
FILE_SCRIPTS = {"adv_training.auto_attacks.eval"}


def sys_path_edits(path: Path):
    """The lines of ``path`` that change sys.path (``sys.path.insert(...)`` and the like) or import
    after such a change (``noqa: E402``)."""
    text = path.read_text(encoding="utf-8")
    lines = {
        node.lineno
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == "sys.path"
    }
    lines |= {number for number, line in enumerate(text.splitlines(), 1) if "noqa: E402" in line}
    return sorted(lines)


def file_scripts(modules):
    """{module: [lines]} of the modules that edit sys.path to run as files: the scripts."""
    return {name: lines for name, path in modules.items() if (lines := sys_path_edits(path))}


def script_imports(modules, scripts):
    """One "A imports B" for every module of ``modules`` that imports a script of ``scripts``."""
    return [
        f"{name} imports {target}"
        for name, targets in sorted(import_graph(modules).items())
        for target in sorted(targets & set(scripts))
    ]


def importers(root: Path = ROOT):
    """The modules that may import the packages: the packages' own and bench/'s (tests may import a
    script's main to test it)."""
    return {**modules_of(root), **{module_name(path, root): path for path in sorted((root / "bench").rglob("*.py"))}}


def test_only_the_entry_script_edits_sys_path():
    scripts = file_scripts(modules_of(ROOT))
    assert set(scripts) == FILE_SCRIPTS, (
        f"modules that edit sys.path or hold `noqa: E402` imports: {scripts}; only {sorted(FILE_SCRIPTS)} is run "
        f"as a file: import the packages as a library does (python -m, or the installed package), or update "
        f"FILE_SCRIPTS when the entry script changes"
    )


def test_no_module_imports_a_script():
    found = script_imports(importers(), FILE_SCRIPTS | set(file_scripts(modules_of(ROOT))))
    assert not found, "modules that import a script (move what they share into a library module): " + "; ".join(found)


def test_the_script_checks_see_a_shim_and_an_import_of_a_script(tmp_path):
    """The two tests above can fail: a second module with a sys.path shim, and a library importing the script."""
    package = tmp_path / "adv_training"
    (package / "auto_attacks").mkdir(parents=True)
    for init in (package / "__init__.py", package / "auto_attacks" / "__init__.py"):
        init.write_text("")
    (package / "auto_attacks" / "eval.py").write_text(
        "import sys\nif not __package__:\n    sys.path.insert(0, '..')\nimport torch  # noqa: E402\n"
    )
    (package / "auto_attacks" / "corruptions.py").write_text("from .eval import main  # noqa: E402\n")
    (package / "export.py").write_text("from adv_training.auto_attacks import eval\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "x.py").write_text(
        "import sys\nsys.path.append('.')\nimport adv_training.auto_attacks.eval\n"
    )
    scripts = file_scripts(modules_of(tmp_path))
    assert scripts == {"adv_training.auto_attacks.eval": [3, 4], "adv_training.auto_attacks.corruptions": [1]}
    assert script_imports(importers(tmp_path), FILE_SCRIPTS) == [
        "adv_training.auto_attacks.corruptions imports adv_training.auto_attacks.eval",
        "adv_training.export imports adv_training.auto_attacks.eval",
        "bench.x imports adv_training.auto_attacks.eval",
    ]
