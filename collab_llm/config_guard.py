"""Configs may only name classes of this project (and the torch / Lightning ones configs need).

A LightningCLI config can name any importable class with ``class_path`` (``model``, ``data``,
``trainer.callbacks``, ``trainer.logger``, optimizers ...) and jsonargparse imports it: a config file
would otherwise run code from any module. :func:`check_class_paths` reads the ``--config`` files and the
command-line overrides before the CLI parses them and refuses (:class:`~collab_llm.errors.UserError`, one
line naming the key and the file) a ``class_path`` outside :data:`ALLOWED_PREFIXES`. Short names without
a dot (``EarlyStopping``) are resolved by jsonargparse among the subclasses it already knows and pass.

Config files can name other config files: jsonargparse reads a ``.yaml``/``.yml``/``.json`` path given as the
value of a class, a list item or a group (``model: model.yaml``, ``callbacks: [cb.yaml]``, ``--trainer
trainer.yaml``, ``--model.init_args.preference pref.yaml``), relative to the including file. Every such value,
in a config file or on the command line, is followed (each file once) and checked the same way. A value
that is a dotted Python name (``model: pkg.Class``, ``callbacks: [pkg.Class]``: jsonargparse's short form of
``class_path``) is checked as a ``class_path`` too, unless it names an existing path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from collab_llm.errors import UserError

ALLOWED_PREFIXES = (
    "collab_llm.", "cf_models.", "projectors.",
    "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.", "torch.optim.",
)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_SUBCLASS_FLAGS = ("--model", "--data", "--trainer.logger", "--optimizer", "--lr_scheduler", "--trainer.callbacks",
                   "--trainer.callbacks+")


def _leaves(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every ``class_path`` and every other scalar in a parsed config."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{key}.{k}" if key else str(k)
            yield from (((sub, v),) if k == "class_path" else _leaves(v, sub))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, obj


def _check_tree(obj: Any, key: str, where: str, base: Path, seen: set[Path]) -> None:
    """Refuse a disallowed ``class_path`` in ``obj`` (read from ``where``), and follow its values that name
    config files: jsonargparse reads a file path given for a class, a list item or a group as that part of
    the config, relative to the including file's folder (``base``) or the working folder."""
    for sub, value in _leaves(obj, key):
        if sub == "class_path" or sub.endswith(".class_path"):
            if not allowed(value):
                _refuse(sub, value, where)
        elif isinstance(value, str) and value.strip().lower().endswith(CONFIG_SUFFIXES):
            _check_file(value.strip(), sub, base, seen)
        elif _looks_like_class(value) and not allowed(value):  # ``model: pkg.Class``, jsonargparse's short form
            _refuse(sub, value, where)


def _looks_like_class(value: Any) -> bool:
    """A dotted Python name (``pkg.module.Class``) that is not an existing path: jsonargparse imports such a
    value given for a class-typed key as that class."""
    return isinstance(value, str) and _DOTTED.match(value) is not None and not os.path.exists(value)


def _check_file(name: str, key: str, base: Path, seen: set[Path]) -> None:
    path = Path(name).expanduser()
    for candidate in ([path] if path.is_absolute() else [base / path, Path.cwd() / path]):
        resolved = candidate.resolve()
        if resolved in seen or not resolved.is_file():
            continue
        seen.add(resolved)
        _check_tree(_load(str(candidate)), key, str(candidate), resolved.parent, seen)


def allowed(value: Any) -> bool:
    return isinstance(value, str) and ("." not in value or value.startswith(ALLOWED_PREFIXES))


def _refuse(key: str, value: Any, where: str) -> None:
    raise UserError(f"{where}: key '{key}' names class {value!r}, which configs may not import (only classes of "
                    f"{', '.join(p.rstrip('.') for p in ALLOWED_PREFIXES)}); use one of the project's classes")


def _load(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None  # the CLI reports a missing config file itself
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"{path}: not a readable YAML config ({str(error).splitlines()[0]})") from None


def check_class_paths(args: Sequence[str]) -> None:
    """Refuse a ``class_path`` outside :data:`ALLOWED_PREFIXES` in ``args``' config files (and the config
    files they name, at any depth) or overrides (inline, or a file given as a value)."""
    args = list(args)
    seen: set[Path] = set()
    i = 0
    while i < len(args):
        token = args[i]
        flag, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) and token.startswith("-") else None)
        step = 1 if inline or value is None else 2
        if flag in ("--config", "-c") and value is not None:
            _check_file(value, "", Path.cwd(), seen)
        elif flag.startswith("--") and value is not None:
            key = flag[2:]
            if value.strip().lower().endswith(CONFIG_SUFFIXES):  # a (sub-)config file given for the key
                _check_file(value.strip(), key, Path.cwd(), seen)
            elif (key.endswith(".class_path") or _looks_like_class(value)
                  or (flag in _SUBCLASS_FLAGS and not value.lstrip().startswith(("{", "[")))):
                if not allowed(value):
                    _refuse(key, value, "the command line")
            elif value.lstrip().startswith(("{", "[")):
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    parsed = None
                _check_tree(parsed, key, "the command line", Path.cwd(), seen)
        i += step
