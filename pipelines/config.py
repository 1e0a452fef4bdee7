"""One configuration mechanism for every stage: typed dataclasses, presets, YAML/JSON files, dotted overrides.

How a stage declares its configuration (``pipelines/<stage>/config.py``):

* A dataclass per section, nested as needed, named ``*Config``; fields carry types and defaults, validation lives in
  ``__post_init__`` and raises ``ValueError`` naming the field. Nothing else is declared per field: loading,
  type coercion, unknown-key errors, ``--set``, ``--help`` listings and the resume hash all follow from the fields.
* Presets are zero-argument functions returning the config or a partial tree of it (a ``dict`` over the defaults),
  collected in a :class:`ConfigSpec` with the stage's name.
* A field that does not change what the stage writes (resources, parallelism, debugging switches) is declared with
  :func:`scheduling`. Every other field, including every field added later, is part of the stage's resume hash
  (:func:`content_hash`): a rerun into the same output refuses a config whose content differs, so forgetting to
  list a new field cannot make a resumed run mix outputs made under different settings.

How a stage's CLI uses it (``pipelines/<stage>/__main__.py``): :meth:`ConfigSpec.add_arguments` adds ``--config
PRESET|FILE``, ``--set KEY=VALUE`` (repeatable; the value is parsed as YAML) and ``--print-config``; :func:`alias`
adds a familiar flag (``--frames-per-clip 8``) that is exactly ``--set frames_per_clip=8``; :meth:`ConfigSpec.resolve`
turns the parsed arguments into the config (preset or file, then ``--set`` and aliases in command-line order). Every
mistake is a :class:`ConfigError` naming the field; :func:`run_cli` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

#: Field metadata key: ``False`` leaves the field out of :func:`content_hash` (see :func:`scheduling`).
HASHED = "hashed"


class UsageError(ValueError):
    """A mistake the user can fix (bad config value, missing input): printed as one line, exit status 2."""


class ConfigError(UsageError):
    """A configuration field is unknown, missing, of the wrong type or out of range; the message names it."""


class InputError(UsageError):
    """An input named by a flag or field does not exist or cannot be read; the message says how to fix it."""


def scheduling(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A field that changes how a stage runs but not what it writes: excluded from :func:`content_hash`.

    Use it for resources (CPUs, GPUs, actor counts), batch sizes that do not change outputs, caches and debugging
    switches. Everything not declared this way is hashed.
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={HASHED: False})


# ------------------------------------------------------------------------------------------------ dict <-> config
def to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON/YAML-safe nested dict (tuples become lists); :func:`from_dict` reads it back."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def from_dict(cls: type, data: Any, name: str, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a (partial) nested mapping, coercing values to the declared types.

    Args:
        cls: the config dataclass.
        data: mapping of field names to values; missing fields take their defaults.
        name: the stage's name, used in error messages (``"ingest"``, ``"train"``).
        prefix: dotted path of ``cls`` inside the whole config (for error messages).

    Raises:
        ConfigError: an unknown or missing field, a value of the wrong type, or a value ``__post_init__`` rejects;
            the message names the dotted field.
    """
    where = prefix.rstrip(".")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name} config field {where or '<root>'!r}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name} config: unknown field {prefix + unknown[0]!r} "
                          f"(known{' in ' + where if where else ''}: {', '.join(sorted(fields))})")
    missing = [f for f, spec in fields.items() if f not in data and spec.default is dataclasses.MISSING
               and spec.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{name} config field {prefix + missing[0]!r}: required, no default")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(hints[key], value, name, prefix + key) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{name} config{' section ' + repr(where) if where else ''}: {err}") from err


def _coerce(tp: Any, value: Any, name: str, path: str) -> Any:
    """``value`` as type ``tp`` (strings from YAML/CLI become numbers, lists become tuples, mappings dataclasses)."""

    def fail(expected: str) -> typing.NoReturn:
        raise ConfigError(f"{name} config field {path!r}: expected {expected}, got {value!r}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return from_dict(tp, value, name, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, name, path)
        return value
    if origin is typing.Literal:
        if value not in args:
            fail(f"one of {list(args)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        fail("true or false")
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            fail("an integer" if tp is int else "a number")
        try:
            number = float(value)
        except ValueError:
            fail("an integer" if tp is int else "a number")
        if tp is float:
            return number
        if not number.is_integer():
            fail("an integer")
        return int(number)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            fail("a string")
        return str(value)
    if origin is tuple or origin is list:
        if isinstance(value, str) or not isinstance(value, Sequence):
            fail("a list")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                fail(f"a list of {len(args)} values")
            items = [_coerce(a, v, name, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))]
        else:
            item = args[0] if args else Any
            items = [_coerce(item, v, name, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            fail("a mapping")
        item = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(item, v, name, f"{path}.{k}") for k, v in value.items()}
    return value


def content_hash(config: Any) -> str:
    """Resume hash of a config: every field except those declared with :func:`scheduling` (nested too)."""
    from pipelines.schema import config_hash

    return config_hash(hashed_fields(config))


def hashed_fields(config: Any) -> dict[str, Any]:
    """The part of ``config`` that :func:`content_hash` covers, as a plain nested dict."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.metadata.get(HASHED, True) is False:
            continue
        value = getattr(config, f.name)
        out[f.name] = hashed_fields(value) if dataclasses.is_dataclass(value) else _plain(value)
    return out


def scheduling_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``cls`` (nested too) left out of the resume hash."""
    names: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get(HASHED, True) is False:
            names.append(prefix + f.name)
        elif dataclasses.is_dataclass(hints[f.name]):
            names += scheduling_fields(hints[f.name], f"{prefix}{f.name}.")
    return names


# ------------------------------------------------------------------------------------------------ files, overrides
class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.2 rule; PyYAML's 1.1 rule needs a dot)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML (which also reads JSON) with exponent floats such as ``1e-4`` read as numbers."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)`` with the value parsed as YAML (``3``, ``1e-4``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set data.seed=3")
    try:
        return key, load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from err


def set_key(tree: dict[str, Any], key: str, value: Any, append: bool = False) -> None:
    """Set (or append to) the dotted ``key`` of a config tree in place, creating intermediate mappings."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    if append:
        node[parts[-1]] = [*node.get(parts[-1], []), value]
    else:
        node[parts[-1]] = value


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into ``base`` in place (mappings merge, anything else replaces); returns ``base``."""
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = json.loads(json.dumps(value)) if isinstance(value, Mapping | list) else value
    return base


def read_file(source: str) -> dict[str, Any]:
    """A config tree from a YAML or JSON file (local path or URI)."""
    from pipelines import storage

    try:
        text = storage.read_bytes(source).decode()
    except (OSError, ValueError) as err:
        raise ConfigError(f"--config {source}: cannot read it ({err})") from err
    try:
        tree = json.loads(text) if source.endswith(".json") else load_yaml(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {source}: cannot parse it ({str(err).splitlines()[0]})") from err
    if not isinstance(tree, dict):
        raise ConfigError(f"--config {source}: the top level must be a mapping of config fields")
    return tree


# ------------------------------------------------------------------------------------------------ the stage's spec
@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    """A stage's config class, its name in messages and its presets.

    Attributes:
        cls: the top-level config dataclass.
        name: the stage's name (``"ingest"``).
        presets: preset name -> zero-argument function returning the config or a partial tree of it; the
            ``default`` preset is used when ``--config`` is not given.
    """

    cls: type
    name: str
    presets: Mapping[str, Callable[[], Any]]

    def tree(self, sources: str | Sequence[str] | None) -> dict[str, Any]:
        """The starting tree: presets' and files' trees merged in order (later fields win), or the default preset."""
        sources = [sources] if isinstance(sources, str) else list(sources or [])
        if not sources:
            sources = ["default"] if "default" in self.presets else []
        tree: dict[str, Any] = {}
        for source in sources:
            merge(tree, self._source_tree(source))
        return tree

    def _source_tree(self, source: str) -> dict[str, Any]:
        if source in self.presets:
            preset = self.presets[source]()
            return to_dict(preset) if dataclasses.is_dataclass(preset) else json.loads(json.dumps(preset))
        from pipelines import storage

        if "://" not in source and not storage.exists(source):
            raise ConfigError(f"--config {source}: neither a preset ({', '.join(sorted(self.presets))}) "
                              "nor an existing YAML/JSON file")
        return read_file(source)

    def load(self, source: str | Sequence[str] | None = None,
             overrides: Iterable[tuple[str, Any, bool] | str] = ()) -> Any:
        """Presets or files (merged in order), then overrides in order (``"key=value"`` or ``(key, value, append)``)."""
        tree = self.tree(source)
        for item in overrides:
            key, value, append = (*parse_override(item), False) if isinstance(item, str) else item
            set_key(tree, key, value, append)
        return from_dict(self.cls, tree, self.name)

    def from_dict(self, data: Any) -> Any:
        return from_dict(self.cls, data, self.name)

    def add_arguments(self, parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
        """Add ``--config``, ``--set`` and ``--print-config``; returns the group for the stage's aliases."""
        group = parser.add_argument_group(
            "configuration", f"The {self.name} config is a preset or a YAML/JSON file, then --set overrides and the "
            "shortcut flags below, applied in command-line order (the fields are listed at the end).")
        group.add_argument("--config", metavar="PRESET|FILE", action="append",
                           help=f"preset ({', '.join(sorted(self.presets))}) or a YAML/JSON file of config fields, "
                           "such as the resolved config a run saves; repeatable, later ones win field by field "
                           "(default: the default preset)")
        group.add_argument("--set", dest="config_overrides", action=_SetAction, metavar="KEY=VALUE",
                           help="set a config field, the value parsed as YAML, e.g. --set a.b=3 (repeatable)")
        group.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        return group

    def resolve(self, args: argparse.Namespace) -> Any:
        """The config from parsed arguments (``--config``, then ``--set`` and aliases in command-line order)."""
        return self.load(args.config, getattr(args, "config_overrides", None) or [])

    def describe(self) -> str:
        """The config fields, one per line (dotted name, type, default, first line of its doc): the epilog."""
        lines = [f"{self.name} config fields (set with --set KEY=VALUE or in a --config file; * = not in the "
                 "resume hash):"]
        lines += [f"  {line}" for line in _describe(self.cls, "")]
        return "\n".join(lines)


def _describe(cls: type, prefix: str) -> list[str]:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += _describe(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = json.dumps(_plain(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = json.dumps(_plain(f.default_factory()))
        else:
            default = "required"
        mark = "*" if f.metadata.get(HASHED, True) is False else ""
        doc = docs.get(f.name, "")
        lines.append(f"{prefix}{f.name}{mark} = {default[:60]}" + (f"  -- {doc}" if doc else ""))
    return lines


def field_docs(cls: type) -> dict[str, str]:
    """First sentence of each field's entry in the ``Attributes:`` section of the class docstring."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in doc.split("Attributes:", 1)[1].splitlines():
        match = re.match(r"^\s{4,8}([\w / ]+?):\s+(.*)$", line)
        if match and not line.startswith(" " * 12):
            current = match.group(1).split("/")[0].strip()
            docs[current] = match.group(2)
        elif current and line.strip():
            docs[current] += " " + line.strip()
        elif not line.strip() and current:
            current = None
    short = {k: v.split(". ")[0].rstrip(".") for k, v in docs.items()}
    return {k: v if len(v) <= 100 else v[:97] + "..." for k, v in short.items()}


class _SetAction(argparse.Action):
    """``--set KEY=VALUE``: appends ``(key, value, False)`` to ``config_overrides`` (shared with the aliases)."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            key, value = parse_override(values)
        except ConfigError as err:
            parser.error(str(err))
        _record(namespace, [(key, value, False)])


def _record(namespace: argparse.Namespace, items: list[tuple[str, Any, bool]]) -> None:
    current = list(getattr(namespace, "config_overrides", None) or [])
    namespace.config_overrides = current + items


class _AliasAction(argparse.Action):
    """A shortcut flag for one or more config keys (see :func:`alias`)."""

    def __init__(self, option_strings, dest, keys: tuple[str, ...], convert: Callable[[Any], Any] | None = None,
                 append: bool = False, **kwargs):
        self.keys, self.convert, self.append = keys, convert, append
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.nargs == 0 else values
        if self.convert is not None:
            try:
                value = self.convert(value)
            except (TypeError, ValueError) as err:
                parser.error(f"{option_string} {values}: {err}")
        items = []
        for key in self.keys:
            # The first use of an appending flag replaces the preset's list; later uses add to it.
            fresh = (option_string, key) not in getattr(namespace, "_config_appended", set())
            if self.append and fresh:
                items.append((key, [value], False))
                namespace._config_appended = {*getattr(namespace, "_config_appended", set()), (option_string, key)}
            else:
                items.append((key, value, self.append))
        _record(namespace, items)


def alias(group: argparse._ActionsContainer, flag: str, key: str | Sequence[str], *, help: str,
          convert: Callable[[Any], Any] | None = None, const: Any = None, append: bool = False, **kwargs: Any) -> None:
    """Add ``flag`` as a shortcut for ``--set key=VALUE`` (or several keys at once).

    Args:
        group: the parser or argument group.
        flag: the option string, e.g. ``"--frames-per-clip"``.
        key: dotted config key(s) the flag sets.
        help: what the flag means; ``(= --set key=...)`` is appended.
        convert: turns the flag's value into the config value (e.g. MB -> bytes); errors become usage errors.
        const: a flag without a value that sets this constant (``--no-plots`` -> ``plots=False``).
        append: repeatable flag collecting a list (its first use replaces the preset's list).
        **kwargs: passed to ``add_argument`` (``type``, ``choices``, ``metavar``).
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    shown = ", ".join(f"--set {k}=..." for k in keys)
    extra: dict[str, Any] = {"nargs": 0, "const": const} if const is not None else {}
    if const is None and "choices" not in kwargs:
        kwargs.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    group.add_argument(flag, action=_AliasAction, keys=keys, convert=convert, append=append, dest="config_overrides",
                       default=None, help=f"{help} (= {shown})", **extra, **kwargs)


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``prog: error: ...``) with exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main: Callable[[], int | None], prog: str) -> int:
    """Run a stage's ``main`` and turn a :class:`UsageError` into one line on stderr and exit status 2."""
    try:
        return int(main() or 0)
    except UsageError as err:
        print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
        return 2


def one_line(text: str) -> str:
    """``text`` with its lines joined, for one-line CLI messages."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def print_config(config: Any) -> None:
    """Print the resolved config as indented JSON (``--print-config``)."""
    print(json.dumps(to_dict(config), indent=1, sort_keys=True))
