"""The README and docs/ pages: their links and paths exist, the README stays short, its table of
paper rows agrees with the configs and the published numbers, and docs/check_docs.py notices a
quickstart table that no longer matches."""

import ast
import importlib.util
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# top-level folders of this repository; a path in backticks starting with one of them is ours
REPO_DIRS = (
    "losses",
    "models",
    "adv_training",
    "knowledge_distillation",
    "engine",
    "experiments",
    "configs",
    "sh",
    "bench",
    "tests",
    "docs",
    ".ci",
)
# folders of this repository that running it creates (AutoAttack's logs of sh/eval.sh)
MADE_BY_USE = {"adv_training/auto_attacks/logs"}
# bare names of files a run writes, or placeholders, that are not configs of configs/
NOT_CONFIGS = {"config.yaml", "config.previous.yaml", "other.yaml"}
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def relative(path):
    return str(path.relative_to(ROOT))


def prose(text):
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    return {
        slug(line.lstrip("#")) for line in prose(page.read_text(encoding="utf-8")).splitlines() if line.startswith("#")
    }


def ignored_dirs():
    """Folders .gitignore keeps out of the repository (runs/, data/, ...): they are made by use."""
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return {line.strip().strip("/") for line in lines if line.strip().endswith("/") and not line.startswith("#")}


def expand_braces(token):
    """`a_{x,y}.yaml` -> ['a_x.yaml', 'a_y.yaml'] (shell-style, any number of groups)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", token)
    choices = [[part] if i % 2 == 0 else part.split(",") for i, part in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def mentioned_paths(text):
    """(repository path, is a bare config name) for every path-like token in inline code spans."""
    for span in CODE.findall(prose(text)):
        base = ""
        cd = re.match(r"cd (\S+) &&", span)
        if cd:
            if not (ROOT / cd.group(1)).is_dir():
                continue  # a command run in the authors' repository
            base = cd.group(1).rstrip("/") + "/"
            span = span[cd.end() :]
        tokens = span.split()
        for i, token in enumerate(tokens):
            token = token.strip("'\",;:()")
            if i > 0 and tokens[i - 1] == "-m" and token.split(".")[0] in REPO_DIRS:
                yield "module:" + token, False
                continue
            if re.search(r"[<>*…]|\.\.\.|\$", token) or "=" in token:
                continue
            for path in expand_braces(token):
                if base and "/" in path and not path.startswith("/"):
                    path = base + path
                if path.startswith(tuple(d + "/" for d in REPO_DIRS)):
                    yield path, False
                elif "/" not in path and path.endswith(".yaml") and path not in NOT_CONFIGS:
                    yield path, True


def module_exists(name):
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or (path / "__main__.py").is_file()


def missing_paths():
    ignored = ignored_dirs()
    configs = {p.name for p in (ROOT / "configs").rglob("*.yaml")}
    missing = set()
    for page in PAGES:
        for path, bare_config in mentioned_paths(page.read_text(encoding="utf-8")):
            if path.startswith("module:"):
                found = module_exists(path[len("module:") :])
            elif bare_config:
                found = path in configs
            elif ignored & set(Path(path).parts) or any(path.startswith(d) for d in MADE_BY_USE):
                continue
            else:
                found = (ROOT / path).exists()
            if not found:
                missing.add(f"{relative(page)}: {path}")
    return sorted(missing)


def test_every_relative_link_points_at_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            if not resolved.exists():
                broken.append(f"{relative(page)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{relative(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_repository_path_in_backticks_exists():
    missing = missing_paths()
    assert not missing, "paths named in the docs that are not in the repository:\n" + "\n".join(missing)


def test_the_path_finder_sees_paths_modules_and_configs():
    text = (
        "Run `python -m experiments.sweep --config configs/adv_training/x_{a,b}.yaml` and read "
        "`adv_training/attacks.py`, `cifar10_mart.yaml`, not `runs/<name>/` or `key=value`;\n"
        "```bash\nbash sh/in_a_fence.sh\n```\n`cd adv_training/auto_attacks && bash sh/eval.sh`"
    )
    found = list(mentioned_paths(text))
    assert found == [
        ("module:experiments.sweep", False),
        ("configs/adv_training/x_a.yaml", False),
        ("configs/adv_training/x_b.yaml", False),
        ("adv_training/attacks.py", False),
        ("cifar10_mart.yaml", True),
        ("adv_training/auto_attacks/sh/eval.sh", False),
    ]


def test_the_readme_is_a_short_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; move details to a docs/ page"


def test_every_docs_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = set(LINK.findall(index))
    unlisted = [p.name for p in PAGES[1:] if p.name != "README.md" and p.name not in linked]
    assert not unlisted, f"docs/README.md does not list {unlisted}"


def paper_rows_sources():
    """The files that hold the paper rows: experiments/paper_rows.py and the modules whose rows it
    gathers (``from X.paper_rows import ...``), else engine/paper_rows.py."""
    source = ROOT / "experiments" / "paper_rows.py"
    if not source.exists():
        return [ROOT / "engine" / "paper_rows.py"]
    text = source.read_text(encoding="utf-8")
    gathered = re.findall(r"^from ([\w.]+) import PAPER_ROWS", text, re.M)
    return [source] + [ROOT / Path(*module.split(".")).with_suffix(".py") for module in gathered]


def rows_of(text):
    """{row: {method: {metric: value}}} of one source file, read (parsed, never imported): each
    entry of its PAPER_ROWS dict is PaperRow(source, helper(numbers...)), and each helper returns a
    dict literal of its parameters."""
    tree = ast.parse(text)
    helpers = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and isinstance(node.body[-1], ast.Return):
            helpers[node.name] = ([a.arg for a in node.args.args], node.body[-1].value)

    def value(node, bound):
        if isinstance(node, ast.Dict):
            return {value(k, bound): value(v, bound) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.Name):
            return bound[node.id]
        return ast.literal_eval(node)

    rows = {}
    for node in tree.body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if not (isinstance(target, ast.Name) and target.id == "PAPER_ROWS" and isinstance(node.value, ast.Dict)):
            continue
        for key, call in zip(node.value.keys, node.value.values):
            if key is None or not (isinstance(call, ast.Call) and len(call.args) == 2):
                continue  # {**other_rows}: read from the other file
            values = call.args[1]
            if isinstance(values, ast.Call) and isinstance(values.func, ast.Name) and values.func.id in helpers:
                params, body = helpers[values.func.id]
                values = value(body, dict(zip(params, (ast.literal_eval(a) for a in values.args))))
            else:
                values = value(values, {})
            rows[ast.literal_eval(key)] = values
    return rows


def paper_rows_table():
    """{row: {method: {metric: value}}} read from the source of the paper rows, not imported."""
    rows = {}
    for source in paper_rows_sources():
        rows.update(rows_of(source.read_text(encoding="utf-8")))
    return rows


# The pages with a table of paper rows after a <!-- paper-rows --> marker: the README's, and the distillation
# page's every pair of the logit recipes (the README shows one pair of each).
PAPER_ROW_PAGES = ("README.md", "docs/distillation.md")


def readme_paper_rows():
    """The lines of the tables of paper rows (after each page's <!-- paper-rows --> marker)."""
    rows = []
    for page in PAPER_ROW_PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "<!-- paper-rows -->" in text, f"{page} has no '<!-- paper-rows -->' table"
        lines = text.split("<!-- paper-rows -->", 1)[1].lstrip("\n").splitlines()
        table = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
        rows += table[2:]  # without the header and the |---| line
    return rows


def test_the_paper_rows_table_is_read_from_its_source():
    rows = paper_rows_table()
    assert rows["cifar100_ikl"] == {"ikl": {"clean": 65.76, "autoattack": 31.91}}
    assert rows["kd_imagenet_r50_mv1"]["dkd"] == {"top1": 72.05}
    assert len(rows) >= 20


def test_each_paper_row_of_the_readme_names_its_config_and_the_published_numbers():
    table = paper_rows_table()
    lines = readme_paper_rows()
    assert len(lines) >= 20
    problems = []
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        configs = re.findall(r"`(configs/[^`]+\.yaml)`", line)
        if len(configs) != 1:
            problems.append(f"names {len(configs)} config files: {line}")
            continue
        config = ROOT / configs[0]
        if not config.is_file():
            problems.append(f"{configs[0]} does not exist")
            continue
        text = config.read_text(encoding="utf-8")
        match = re.search(r"^paper_row:\s*(\S*)", text, re.M)
        row = match.group(1).strip("\"'") if match else ""
        if not row or row.startswith("#"):
            continue  # a setting the paper_rows table has no entry for
        if row not in table:
            problems.append(f"{configs[0]}: paper_row '{row}' is not in the paper rows table")
            continue
        shown = [float(v) for v in re.findall(r"\d+\.\d+", cells[3])]
        values = table[row]
        if "ikl" not in values:  # a row of one other method (a distiller's, an AT baseline's): its config's method
            method = re.search(r"^method:\s*(\S+)", text, re.M)
            numbers = values.get(method.group(1)) if method else None
            keys = ("top1",) if numbers is None or "top1" in numbers else ("clean", "autoattack")
            expected = [numbers[key] for key in keys] if numbers is not None else None
        elif "top1" in values["ikl"]:  # IKL-KD / DKD / KD, or IKL-KD alone (the authors' GKL-KD rows)
            expected = [values[m]["top1"] for m in ("ikl", "dkd", "kd") if m in values]
        else:
            expected = [values["ikl"]["clean"], values["ikl"]["autoattack"]]
        if shown != expected:
            problems.append(f"{configs[0]} ({row}): the README shows {shown}, the table holds {expected}")
    assert not problems, "\n".join(problems)


def check_docs():
    spec = importlib.util.spec_from_file_location("check_docs", ROOT / "docs" / "check_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shown_quickstart_output():
    """The quickstart output the README shows, as the command printed it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(check_docs().HEADER)
    return text[start : text.index("```", start)]


def test_check_docs_accepts_the_table_the_docs_show():
    module = check_docs()
    output = "== training digits_ikl\n...\n" + shown_quickstart_output()
    assert module.differences(output, module.doc_pages()) == []


def test_check_docs_exits_zero_on_the_shown_table_and_one_on_a_changed_one(tmp_path, capsys):
    module = check_docs()
    shown = shown_quickstart_output()
    (tmp_path / "same.txt").write_text(shown)
    assert module.main(["--output", str(tmp_path / "same.txt")]) == 0
    row = next(line for line in shown.splitlines() if line.startswith("IKL-AT"))
    clean = re.search(r"(\d+\.\d)%", row).group(1)
    changed = shown.replace(row, row.replace(f"{clean}%", f"{float(clean) - 0.1:.1f}%", 1))
    (tmp_path / "changed.txt").write_text(changed)
    assert module.main(["--output", str(tmp_path / "changed.txt")]) == 1
    assert "differs: README.md" in capsys.readouterr().err
    # wall times and the run folder's name do not count
    retimed = re.sub(r"\d+\.\d min", "9.9 min", shown).replace("runs/quickstart/", "runs/quickstart/x")
    (tmp_path / "retimed.txt").write_text(retimed)
    assert module.main(["--output", str(tmp_path / "retimed.txt")]) == 0
    (tmp_path / "empty.txt").write_text("no table here\n")
    assert module.main(["--output", str(tmp_path / "empty.txt")]) == 2


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_no_page_narrates_the_project_s_history(page):
    text = prose(page.read_text(encoding="utf-8"))
    phrases = ["no GPU was available", "an earlier version", "no GPU has been lent", "used to be"]
    found = [phrase for phrase in phrases if phrase.lower() in text.lower()]
    assert not found, f"{relative(page)} narrates history: {found}"
