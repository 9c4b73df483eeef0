"""Read, check, save and compare experiment configs.

A config file is YAML. It may inherit from other files with ``_base_: relative/path.yaml`` (or a
list of paths, merged in order); the file's own keys win, nested mappings merge, lists are
replaced, and a mapping holding ``_delete_: true`` replaces the inherited one whole. Dotted
overrides (``model.attention.cross=sparsemax``) come last. The merged tree is then checked
against the dataclass schema of ``attnkit.config.schema``: an unknown key or a value of the
wrong type raises :class:`ConfigError` naming the key, the file (or override) that set it, and
the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from attnkit.config.constraints import Check
from attnkit.config.schema import DEFAULT_FAMILY, FAMILY_SECTIONS, ExperimentConfig
from attnkit.errors import ConfigError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
CONFIG_FILENAME = "config.yaml"


# --------------------------------------------------------------------------- reading + merging


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config file: {err}") from err
    if data is None:
        raise ConfigError(
            f"{path}: the config file is empty; write at least '{BASE_KEY}: <a config>' "
            "or the keys to set (an empty file is refused so that a truncated file is noticed)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: Mapping, origin: dict[str, str], source: str, prefix: str = "") -> None:
    """Deep-merge ``src`` into ``dst``, recording in ``origin`` which source set each key.

    A mapping in ``src`` holding ``_delete_: true`` replaces the one in ``dst`` instead of
    merging into it (a config whose task has another ``loss`` schema than its base's).
    """
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        origin[dotted] = source
        if isinstance(value, Mapping) and isinstance(value.get(DELETE_KEY), bool):
            if value[DELETE_KEY]:  # (any other value is left for the schema to call unknown)
                dst.pop(key, None)  # what the bases set is dropped, not merged into
            value = {k: v for k, v in value.items() if k != DELETE_KEY}
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, dotted + ".")
        elif isinstance(value, Mapping):
            dst[key] = {}
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = value


def _load_tree(path: Path, origin: dict[str, str], chain: tuple[Path, ...] = ()) -> dict:
    """The merged raw tree of ``path`` and its bases (recursively), bases first."""
    path = path.resolve()
    if path in chain:
        loop = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config inheritance loop: {loop}")
    raw = _read_yaml(path)
    bases = raw.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a path or a list of paths")
    tree: dict = {}
    for base in bases:
        base_tree = _load_tree(path.parent / base, origin, (*chain, path))
        _merge(tree, base_tree, {}, "")  # origins were recorded while loading the base
    _merge(tree, raw, origin, str(path))
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the dotted key and the YAML-parsed value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=1e-4)")
    try:
        return key, yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        if "{checkpoints}" in value:  # a shipped-model path, not a YAML flow mapping
            return key, value.strip()
        problem = getattr(err, "problem", None) or "cannot be parsed"
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML ({problem}); quote strings, "
            "close brackets, e.g. train.lr=1e-4 or data.train_scales=[480,512]"
        ) from err


def _overrides_as_pairs(overrides: Mapping[str, Any] | Iterable[str] | None) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(k), v, f"override '{k}={v}'") for k, v in overrides.items()]
    pairs = []
    for text in overrides:
        key, value = parse_override(text)
        pairs.append((key, value, f"override '{text}'"))
    return pairs


def _set_dotted(tree: dict, key: str, value: Any, origin: dict[str, str], source: str) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            sub = ".".join(parts[: i + 1])
            raise ConfigError(f"{source}: '{sub}' is a value, not a section; cannot set '{key}'")
        node = child
    if isinstance(value, Mapping):
        node[parts[-1]] = {}
        _merge(node[parts[-1]], value, origin, source, key + ".")
    else:
        node[parts[-1]] = value
    origin[key] = source


# --------------------------------------------------------------------------- type checking


def _closest_hint(key: str, valid: Iterable[str], prefix: str) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return "valid keys here: " + ", ".join(valid)


def _source(key: str, origin: dict[str, str]) -> str:
    """The file or override that set ``key`` (or its list items, children or parents)."""
    if key in origin:
        return origin[key]
    base = key.split("[", 1)[0]
    for candidate, source in origin.items():
        if candidate == base or candidate.startswith(base + "."):
            return source
    while "." in base:
        base = base.rsplit(".", 1)[0]
        if base in origin:
            return origin[base]
    return "defaults"


def _describe(hint: Any) -> str:
    if dataclasses.is_dataclass(hint):
        return "a section (a mapping of keys)"
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"a mapping of names to {_describe(typing.get_args(hint)[1])}"
    if hint is type(None):
        return "null"
    if origin is typing.Annotated:
        base, *checks = typing.get_args(hint)
        texts = [c.text for c in checks if isinstance(c, Check)]
        return _describe(base) + (f" ({', '.join(texts)})" if texts else "")
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, key: str, origin: dict[str, str]) -> Any:
    """Check ``value`` against the type ``hint`` and return it converted (or raise)."""

    def fail(extra: str = "") -> ConfigError:
        msg = f"{_source(key, origin)}: '{key}' must be {_describe(hint)}, got {value!r}"
        return ConfigError(msg + (f"; {extra}" if extra else ""))

    kind = typing.get_origin(hint)
    if kind is typing.Annotated:
        base, *checks = typing.get_args(hint)
        converted = _convert(value, base, key, origin)
        for check in checks:
            if isinstance(check, Check) and not check(converted):
                raise ConfigError(
                    f"{_source(key, origin)}: '{key}' must be {check.text}, got {converted!r}"
                )
        return converted
    if kind is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            close = _close(value, choices)
            raise fail(f"did you mean {close[0]!r}?" if close else "")
        return value
    if kind in (typing.Union, types.UnionType):
        alternatives = typing.get_args(hint)
        if value is None and type(None) in alternatives:
            return None
        options = [alt for alt in alternatives if alt is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message is the precise one
            return _convert(value, options[0], key, origin)
        for alt in options:
            try:
                return _convert(value, alt, key, origin)
            except ConfigError:
                continue
        raise fail()
    if kind is list:
        if not isinstance(value, list):
            raise fail()
        (item,) = typing.get_args(hint)
        return [_convert(v, item, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if kind is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise fail()
        _, item = typing.get_args(hint)
        return {k: _convert(v, item, f"{key}.{k}", origin) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise fail()
        return _build(hint, value, origin, key + ".")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    if hint is Any:
        return value
    raise TypeError(f"unsupported schema type {hint!r} for '{key}'")  # a bug in the schema


def _family_schemas(data: Mapping, origin: dict[str, str]) -> dict[str, type]:
    """The schemas of the family-tagged root sections, from ``model.name`` (default DETR) and
    the root key ``task`` (default: the family's own task)."""
    from attnkit.models.registry import FAMILIES
    from attnkit.tasks import get_task

    model = data.get("model")
    name = model.get("name", DEFAULT_FAMILY) if isinstance(model, Mapping) else DEFAULT_FAMILY
    if name not in FAMILIES:
        raise ConfigError(
            f"{_source('model.name', origin)}: 'model.name' must be "
            f"{_describe(typing.Literal[tuple(FAMILIES)])}, got {name!r}"
            + (f"; did you mean {c[0]!r}?" if (c := _close(name, FAMILIES)) else "")
        )
    family = FAMILIES[name]
    task_name = data.get("task")
    if task_name is None:
        task_name = family.task
    elif task_name not in family.all_tasks:
        allowed = family.all_tasks
        raise ConfigError(
            f"{_source('task', origin)}: 'task' must be {_describe(typing.Literal[allowed])} "
            f"(the tasks of model.name={family.name!r}) or null for {family.task!r}, "
            f"got {task_name!r}"
            + (f"; did you mean {c[0]!r}?" if (c := _close(task_name, allowed)) else "")
        )
    task = get_task(task_name)
    # A family's own loss schema belongs to its default task; another task brings its own.
    family_loss = family.loss_schema if task_name == family.task else None
    return {
        "model": family.schema,
        "data": task.data_schema,
        "loss": family_loss or task.loss_schema,
    }


def _close(value: Any, choices: Iterable[str]) -> list[str]:
    return difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)


def _build(cls: type, data: Mapping, origin: dict[str, str], prefix: str = "") -> Any:
    """Instantiate the dataclass ``cls`` from a raw mapping, checking every key and type.

    At the root, the family-tagged sections (``model``, ``data``, ``loss``) take the schemas of
    the family that ``model.name`` names; missing ones get that family's defaults.
    """
    sections = _family_schemas(data, origin) if cls is ExperimentConfig else {}
    hints = {**typing.get_type_hints(cls, include_extras=True), **sections}
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"{_source(dotted, origin)}: unknown key '{dotted}'; {_closest_hint(key, fields, prefix)}"
            )
        kwargs[key] = _convert(value, hints[key], dotted, origin)
    for key in FAMILY_SECTIONS if sections else ():
        kwargs.setdefault(key, sections[key]())
    built = cls(**kwargs)
    _check_rules(built, origin, prefix)
    return built


def _check_rules(section: Any, origin: dict[str, str], prefix: str) -> None:
    """The schema's rules between fields (``CHECKS``, see :mod:`attnkit.config.constraints`)."""
    for rule in getattr(type(section), "CHECKS", ()):
        message = rule.message(section)
        if message is not None:
            sources = [_source(f"{prefix}{key}", origin) for key in rule.keys]
            overrides = [s for s in sources if s.startswith("override")]  # the latest change
            source = next(iter(overrides or [s for s in sources if s != "defaults"]), "defaults")
            raise ConfigError(f"{source}: {message.replace('{p}', prefix)}")


# --------------------------------------------------------------------------- public API


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    schema: type = ExperimentConfig,
) -> Any:
    """Read a config file (or a run folder holding ``config.yaml``) into a typed dataclass.

    ``overrides`` are dotted ``key=value`` strings (as on the command line) or a mapping of dotted
    keys to values (as from notebook parameters). ``path=None`` gives the schema's defaults.
    """
    origin: dict[str, str] = {}
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILENAME
        tree = _load_tree(path, origin)
    for key, value, source in _overrides_as_pairs(overrides):
        _set_dotted(tree, key, value, origin, source)
    return _build(schema, tree, origin)


def config_to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config dataclass (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, out: str | Path) -> Path:
    """Write the resolved config as YAML; ``out`` is a file or a run folder."""
    out = Path(out)
    if out.suffix not in (".yaml", ".yml"):
        out.mkdir(parents=True, exist_ok=True)
        out = out / CONFIG_FILENAME
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    out.write_text(text)
    return out


def config_from_dict(
    tree: Mapping,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    schema: type = ExperimentConfig,
    source: str = "checkpoint config",
) -> Any:
    """A typed config from a plain nested dict (as stored in checkpoints), plus overrides."""
    origin: dict[str, str] = {}
    merged: dict = {}
    _merge(merged, tree, origin, source)
    for key, value, src in _overrides_as_pairs(overrides):
        _set_dotted(merged, key, value, origin, src)
    return _build(schema, merged, origin)
