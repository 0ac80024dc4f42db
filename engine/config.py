"""Typed configuration: a dataclass schema, YAML files over it, ``key=value`` over those.

Every knob is a dataclass field declared with `knob`, so it has a type, a default and a
one-line description (``--print-config`` shows all three). Loading is strict:

* an unknown key, in a YAML file or on the command line, is an error that names the key
  and the closest valid one (``optim.lr_sheduler`` -> did you mean ``optim.lr_schedule``?);
* a key that was renamed (listed in the schema's ``RENAMED_KEYS``: a key, or a whole section) keeps
  working: it is read as its new name, and a note on standard error says what to write instead;
* a value of the wrong type is an error naming the key, the expected type and the value;
* ints are accepted where floats are expected, and a float knob also takes a fraction
  written as ``8/255``, because that is how attack budgets are quoted.

Precedence: schema defaults < YAML file (which may name a ``base:`` file it extends,
relative to itself) < command-line ``key=value`` overrides (values parsed as YAML).
"""

import copy
import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterable, List, Literal, Mapping, Optional, Tuple, Type, TypeVar, Union

import yaml

from .errors import UserError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 integers: decimal only. YAML 1.1 would read 010 as 8
    (octal), 1:00 as 60 (base 60) and 0b101 as 5; here they stay text, and a number knob refuses them."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


_FLOAT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_FRACTION = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


class ConfigError(UserError):
    """A configuration that does not fit the schema."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number knob admits: bounds (None = unbounded), and NaN/inf always refused."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{number(self.low)}, {number(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {number(self.high)}"
        return "a finite number"


BATCH = Range(1, 2**20)
EPOCHS = Range(1, 100_000)
SEED = Range(0, 2**32 - 1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
FINITE = Range()


def knob(default: Any, help: str, *, valid: Optional[Range] = None, changes_result: bool = True, **kwargs) -> Any:
    """A schema field with its description and, for numbers, the `Range` it admits.

    ``changes_result=False`` declares a knob that says where or how a run runs, not what it
    trains (folders, devices, workers, faster kernels with the same training to float
    tolerance): runs that differ only in such knobs (and the seed) are one setting for the
    sweep and the report (`where_and_how_keys`).

    Mutable defaults (lists) are copied per instance. Float knobs admit any finite number
    unless ``valid`` says more; every value is checked when a config is loaded, before the
    schema's own ``validate`` (which checks what involves several knobs).
    """
    metadata = {"help": help, "valid": valid, "changes_result": changes_result}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def section(cls: Type[T], help: str) -> T:
    """A nested group of knobs (a dataclass), created with its defaults."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# --- schema introspection ---------------------------------------------------------------


def _fields(schema) -> Dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(schema if isinstance(schema, type) else type(schema))
    result = {}
    for field in dataclasses.fields(schema):
        field.type = hints[field.name]
        result[field.name] = field
    return result


def _is_section(field_type) -> bool:
    return isinstance(field_type, type) and dataclasses.is_dataclass(field_type)


def valid_keys(schema, prefix: str = "") -> List[str]:
    """Every dotted key the schema accepts, sections included."""
    keys = []
    for name, field in _fields(schema).items():
        keys.append(prefix + name)
        if _is_section(field.type):
            keys.extend(valid_keys(field.type, prefix + name + "."))
    return keys


def renamed_key(key: str, schema_root) -> Optional[str]:
    """The name ``key`` has now when the schema's ``RENAMED_KEYS`` renamed it (or a section it is in),
    else None: ``{"swa": "epoch_average"}`` makes ``swa.tau`` ``epoch_average.tau``."""
    renamed = getattr(schema_root, "RENAMED_KEYS", {})
    for old, new in renamed.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def _note_renamed(key: str, new: str, where: str) -> None:
    print(f"note: config key '{key}' ({where}) is now called '{new}'; read as {new} (same meaning)", file=sys.stderr)


def _apply_renames(data: Dict[str, Any], schema_root, where: Optional[str]) -> Dict[str, Any]:
    """A YAML mapping with every renamed key (or section) moved to its new name, each said on standard
    error unless ``where`` is None; a key given under both names is an error."""
    moves = []

    def walk(mapping, prefix):
        for name in list(mapping):
            key = prefix + str(name)
            new = renamed_key(key, schema_root)
            if new is not None:
                moves.append((key, new, mapping.pop(name)))
            elif isinstance(mapping[name], dict):
                walk(mapping[name], key + ".")

    walk(data, "")
    for old, new, value in moves:
        if where is not None:
            _note_renamed(old, new, where)
        *sections, last = new.split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"config section '{section}' must be a mapping ({where}), got {target!r}")
        if last in target:
            raise ConfigError(f"config key '{old}' and its new name '{new}' are both given ({where}); keep {new}")
        target[last] = value
    return data


def with_current_keys(data: Dict[str, Any], schema_root) -> Dict[str, Any]:
    """A saved config mapping (``to_dict``'s, from an earlier run) with its renamed keys under their
    current names, silently: what comparing it with today's config needs."""
    return _apply_renames(copy.deepcopy(data), schema_root, None)


def _unknown_key_error(key: str, schema_root, where: str) -> ConfigError:
    candidates = valid_keys(schema_root)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:  # a misspelt last component under the right section
        last = key.rsplit(".", 1)[-1]
        by_last = {k.rsplit(".", 1)[-1]: k for k in candidates}
        matches = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
        close = [by_last[m] for m in matches]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' ({where}){hint} Run with --print-config to list every key.")


# --- values -----------------------------------------------------------------------------


def _type_name(field_type) -> str:
    origin = typing.get_origin(field_type)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(field_type))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(field_type))
    if origin in (list, List):
        (item,) = typing.get_args(field_type)
        return f"list of {_type_name(item)}"
    return getattr(field_type, "__name__", str(field_type)).replace("NoneType", "null")


def _convert(value: Any, field_type, key: str) -> Any:
    """``value`` as ``field_type``, or a ConfigError that says what was expected."""

    def fail():
        return ConfigError(f"config key '{key}' expects {_type_name(field_type)}, got {value!r}")

    origin = typing.get_origin(field_type)
    if origin is Literal:
        if value in typing.get_args(field_type):
            return value
        raise fail()
    if origin in (Union, types.UnionType):
        for option in typing.get_args(field_type):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise fail()
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item,) = typing.get_args(field_type)[:1]
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if field_type is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if field_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if field_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value):
            # YAML 1.1 reads 1e-3 and 5e-4 (no dot) as strings; they are numbers.
            return float(value)
        if isinstance(value, str) and _FRACTION.match(value):
            numerator, denominator = _FRACTION.match(value).groups()
            if float(denominator) == 0:
                raise fail()
            return float(numerator) / float(denominator)
        raise fail()
    if field_type is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise TypeError(f"unsupported schema type {field_type!r} for '{key}'")


def _merge(config, updates: Dict[str, Any], schema_root, prefix: str, where: str) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(
            f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping ({where}), got {updates!r}"
        )
    fields = _fields(config)
    for name, value in updates.items():
        key = prefix + str(name)
        if name not in fields:
            raise _unknown_key_error(key, schema_root, where)
        field = fields[name]
        if _is_section(field.type):
            _merge(getattr(config, name), value, schema_root, key + ".", where)
        else:
            setattr(config, name, _convert(value, field.type, key))


def _set_dotted(config, key: str, raw_value: str, schema_root) -> None:
    where = f"command line '{key}={raw_value}'"
    target = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = _fields(target)
        if part not in fields:
            raise _unknown_key_error(key, schema_root, where)
        field = fields[part]
        is_last = depth == len(parts) - 1
        if _is_section(field.type):
            if is_last:
                raise ConfigError(f"'{key}' is a section, not a value; set one of its keys, e.g. '{key}.<name>=...'")
            target = getattr(target, part)
        elif not is_last:
            raise _unknown_key_error(key, schema_root, where)
        else:
            setattr(target, part, _convert(_parse_command_line_value(raw_value, field.type), field.type, key))
            return


def _parse_command_line_value(raw_value: str, field_type) -> Any:
    """YAML parsing of a command-line value, except that a string knob keeps the text as typed."""
    options = (
        typing.get_args(field_type) if typing.get_origin(field_type) in (Union, types.UnionType) else (field_type,)
    )
    if str in options:
        if type(None) in options and raw_value in ("null", "~", "None"):
            return None
        return raw_value
    try:
        return _yaml(raw_value)
    except yaml.YAMLError:
        return raw_value


def _read_yaml(path: Path, schema_root, seen: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    """A YAML mapping, renamed keys under their current names, with its ``base:`` chain merged underneath it."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files extend each other in a loop: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = _yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    base = data.pop("base", None)
    data = _apply_renames(data, schema_root, f"in {path}")  # each file's own keys, before the chain merges
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"'base:' in {path} must be the file name of the config it extends, got {base!r}")
    merged = _read_yaml(path.parent / base, schema_root, seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(target: Dict[str, Any], updates: Dict[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# --- public API -------------------------------------------------------------------------


def load_config(schema: Type[T], path: Optional[Union[str, Path]] = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``schema``, then the YAML file at ``path``, then ``key=value`` overrides."""
    config = schema()
    if path is not None:
        _merge(config, _read_yaml(Path(path), schema), schema, "", f"in {path}")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"command-line override '{override}' must look like key=value, e.g. optim.lr=0.1")
        key, raw_value = (part.strip() for part in override.split("=", 1))
        new = renamed_key(key, schema)
        if new is not None:
            _note_renamed(key, new, f"command line '{override}'")
            key = new
        _set_dotted(config, key, raw_value, schema)
    check_ranges(config)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def check_ranges(config, prefix: str = "") -> None:
    """Every number knob lies in its declared `Range` (floats: finite at least); lists item by item."""
    for name, field in _fields(config).items():
        value, key = getattr(config, name), prefix + name
        if _is_section(field.type):
            check_ranges(value, key + ".")
            continue
        valid = field.metadata.get("valid") or (FINITE if _admits_float(field.type) else None)
        if valid is None:
            continue
        for index, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not valid.admits(item):
                where = f"{key}[{index}]" if isinstance(value, list) else key
                raise ConfigError(f"config key '{where}' must be {valid}, got {item!r}")


def _admits_float(field_type) -> bool:
    options = (
        typing.get_args(field_type) if typing.get_origin(field_type) in (Union, types.UnionType) else (field_type,)
    )
    return float in options


def require_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """For a schema's ``validate``: ``value`` must be one of ``choices`` (e.g. a registry's names)."""
    choices = list(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got '{value}'{hint}")


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=+,-]*$")


def require_plain_name(key: str, value: str) -> None:
    """A folder name inside out_dir: no path separators, no '..', nothing hidden."""
    if value and (not _PLAIN_NAME.match(value) or value in (".", "..") or ".." in value):
        raise ConfigError(
            f"config key '{key}' must be a plain folder name (letters, digits and . _ - = + ,; no '/' or '..'), "
            f"got {value!r}"
        )


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def require_device(key: str, value: str) -> None:
    if not _DEVICE.match(value):
        raise ConfigError(f"config key '{key}' must be auto, cpu, cuda, cuda:N or mps, got {value!r}")


def require_not_both_compile_and_sync_bn(compile_: bool, sync_bn: bool) -> None:
    """torch.compile and SyncBatchNorm do not go together under DistributedDataParallel (dynamo
    breaks its graph at every SyncBatchNorm layer, or fails there: open PyTorch issues), so the
    pair is refused before anything runs rather than left to fail, or crawl, on a cluster."""
    if compile_ and sync_bn:
        raise ConfigError(
            "config keys 'compile' and 'sync_bn' are both true, which is refused: torch.compile breaks "
            "its graph at every SyncBatchNorm layer under several processes; use compile=true with "
            "BatchNorm per process (sync_bn=false, the reference's statistics), or sync_bn=true "
            "without compile"
        )


def require_increasing(key: str, values: List[int]) -> None:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ConfigError(f"config key '{key}' must list epochs in increasing order, got {values}")


# --- the knobs every training run has ---------------------------------------------------------


@dataclasses.dataclass
class RunConfig:
    """What a training run of either task is asked, besides what it trains: the schema both task
    configs extend. A task redefines a knob (its default, or a help that says more) in place;
    ``PAPER_ROWS`` is the task's table of published rows that ``paper_row`` may name."""

    PAPER_ROWS: ClassVar[Mapping[str, Any]] = {}
    TASK: ClassVar[str] = ""  # the task's id (its package): in last.pt and environment.json

    method: str = knob("", "training objective: a name in the task's registry")
    epochs: int = knob(1, "training epochs", valid=EPOCHS)
    seed: int = knob(0, "seed of every random number generator (set once, in engine.environment)", valid=SEED)
    deterministic: bool = knob(
        False, "deterministic kernels (slower; needed for bit-exact resume on GPU)", changes_result=False
    )
    device: str = knob("auto", "auto (CUDA when present), cpu, cuda or cuda:N", changes_result=False)
    precision: Literal["fp32", "tf32", "bf16"] = knob(
        "fp32",
        "fp32 = strict float32; tf32 = TF32 matrix products and convolutions (Ampere GPUs and later); "
        "bf16 = bf16 autocast for the training forwards",
    )
    channels_last: bool = knob(False, "NHWC memory format (faster convolutions on recent GPUs)", changes_result=False)
    compile: bool = knob(
        False,
        "torch.compile the training forwards (the first epoch compiles, reported as "
        "compile_seconds; a last smaller batch runs uncompiled)",
        changes_result=False,
    )
    sync_bn: bool = knob(
        False,
        "several processes: BatchNorm statistics over the global batch (CUDA only); "
        "false = per process, as the reference's DataParallel",
    )
    batchnorm_groups: int = knob(
        1,
        "BatchNorm groups per global batch, as the authors' nn.DataParallel on that many GPUs: each training "
        "forward normalises the batch in that many torch.chunk pieces, the running statistics those of the "
        "first (engine/batchnorm_groups.py); a multiple of the process count, or 1 = one group per process",
        valid=Range(1, 1024),
    )
    dist_timeout: float = knob(
        1800.0,
        "several processes: seconds a collective waits for the others before the run "
        "fails (a dead process never hangs the rest)",
        valid=POSITIVE,
        changes_result=False,
    )
    allow_world_size_change: bool = knob(
        False,
        "resume last.pt with another number of processes than wrote it "
        "(the data order then differs from an uninterrupted run)",
        changes_result=False,
    )
    out_dir: str = knob("runs", "parent folder of run folders", changes_result=False)
    name: str = knob("", "run folder name under out_dir; empty = the task's name of the run", changes_result=False)
    resume: bool = knob(False, "continue from <run folder>/last.pt", changes_result=False)
    stop_after: int = knob(
        0,
        "stop after this epoch and keep last.pt, for job time limits (resume=true continues); 0 = run to the end",
        valid=NON_NEGATIVE,
        changes_result=False,
    )
    paper_row: str = knob(
        "",
        "the row of the paper's tables this config reproduces (the task's paper_rows.py): "
        "python -m experiments.report prints its published numbers beside the measured ones",
        changes_result=False,
    )

    def validate(self) -> None:
        """The checks of the shared knobs; a task's ``validate`` calls this first."""
        if not self.out_dir.strip():
            raise ConfigError(
                "config key 'out_dir' is empty: name the folder that holds run folders, e.g. out_dir=runs"
            )
        require_plain_name("name", self.name)
        if self.paper_row:
            require_choice("paper_row", self.paper_row, sorted(self.PAPER_ROWS))
        require_device("device", self.device)
        require_not_both_compile_and_sync_bn(self.compile, self.sync_bn)
        if self.sync_bn and self.batchnorm_groups > 1:
            raise ConfigError(
                f"config keys 'sync_bn' (true) and 'batchnorm_groups' ({self.batchnorm_groups}) contradict each "
                "other: SyncBatchNorm normalises over the global batch, batchnorm_groups over chunks of it; "
                "use one of them"
            )

    def run_name(self) -> str:
        """The run folder's name under out_dir (``name``, else one the task builds from its settings)."""
        raise NotImplementedError


def get_value(config, key: str) -> Any:
    """The value at a dotted key (for shell scripts: ``--get optim.lr``; a renamed key is read under its
    current name)."""
    value = config
    key = renamed_key(key, type(config)) or key
    for part in key.split("."):
        if not (dataclasses.is_dataclass(value) and part in _fields(value)):
            raise _unknown_key_error(key, type(config), "asked for with --get")
        value = getattr(value, part)
    return value


def changed_keys(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: old -> new`` for every setting that differs between two `to_dict` results."""
    changed = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += changed_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changed


def to_dict(config) -> Dict[str, Any]:
    return dataclasses.asdict(config)


def where_and_how_keys(schema, prefix: str = "") -> List[str]:
    """The dotted keys of the knobs declared ``changes_result=False``: what the sweep and the
    report leave out when they compare what runs trained."""
    keys = []
    for name, field in _fields(schema).items():
        if _is_section(field.type):
            keys.extend(where_and_how_keys(field.type, prefix + name + "."))
        elif not field.metadata.get("changes_result", True):
            keys.append(prefix + name)
    return keys


def flat_dict(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``: nested sections as dotted keys."""
    flat: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flat_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def from_dict(schema: Type[T], data: Dict[str, Any]) -> T:
    """Rebuild a config saved by `to_dict` (for example from a checkpoint or an earlier run's
    config.yaml), strictly; renamed keys are read under their current names."""
    config = schema()
    _merge(config, with_current_keys(data, schema), schema, "", "in the saved config")
    return config


def to_yaml(config, with_help: bool = False) -> str:
    """YAML text of the resolved config; with ``with_help`` every key carries its description."""
    if not with_help:
        return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)
    lines: List[str] = []
    _describe(config, lines, indent="")
    return "\n".join(lines) + "\n"


def _describe(config, lines: List[str], indent: str) -> None:
    for name, field in _fields(config).items():
        value = getattr(config, name)
        help_text = field.metadata.get("help", "")
        if _is_section(field.type):
            lines.append(f"{indent}{name}:  # {help_text}")
            _describe(value, lines, indent + "  ")
        else:
            rendered = yaml.safe_dump(value, default_flow_style=True).strip()
            rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
            valid = field.metadata.get("valid")
            allowed = _type_name(field.type) + (f", {valid}" if valid is not None else "")
            lines.append(f"{indent}{name}: {rendered}  # {help_text} [{allowed}]")
