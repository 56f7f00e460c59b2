"""Configs may only name classes of this project (and the torch / Lightning ones configs need).

A LightningCLI config can name any importable class with ``class_path`` (``model``, ``data``,
``trainer.callbacks``, ``trainer.logger``, optimizers ...) and jsonargparse imports it: a config file
would otherwise run code from any module. :func:`check_class_paths` reads the ``--config`` files and the
command-line overrides before the CLI parses them and refuses (:class:`~collab_llm.errors.UserError`, one
line naming the key and the file) a ``class_path`` outside :data:`ALLOWED_PREFIXES`. Short names without
a dot (``EarlyStopping``) are resolved by jsonargparse among the subclasses it already knows and pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from collab_llm.errors import UserError

ALLOWED_PREFIXES = (
    "collab_llm.", "cf_models.", "projectors.",
    "lightning.pytorch.callbacks.", "lightning.pytorch.loggers.", "pytorch_lightning.callbacks.",
    "pytorch_lightning.loggers.", "torch.optim.",
)
_SUBCLASS_FLAGS = ("--model", "--data", "--trainer.logger", "--optimizer", "--lr_scheduler", "--trainer.callbacks",
                   "--trainer.callbacks+")


def _class_paths(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{key}.{k}" if key else str(k)
            if k == "class_path":
                yield sub, v
            else:
                yield from _class_paths(v, sub)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _class_paths(v, f"{key}[{i}]")


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
    """Refuse a ``class_path`` outside :data:`ALLOWED_PREFIXES` in ``args``' config files or overrides."""
    args = list(args)
    i = 0
    while i < len(args):
        token = args[i]
        flag, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        value = inline if inline else (args[i + 1] if i + 1 < len(args) and token.startswith("-") else None)
        step = 1 if inline or value is None else 2
        if flag in ("--config", "-c") and value is not None:
            for key, found in _class_paths(_load(value)):
                if not allowed(found):
                    _refuse(key, found, value)
        elif flag.startswith("--") and value is not None:
            key = flag[2:]
            if key.endswith(".class_path") or (flag in _SUBCLASS_FLAGS and not value.lstrip().startswith(("{", "["))):
                if value.endswith((".yaml", ".yml", ".json")):  # a sub-config file given for the key
                    for sub, found in _class_paths(_load(value), key):
                        if not allowed(found):
                            _refuse(sub, found, value)
                elif not allowed(value):
                    _refuse(key, value, "the command line")
            elif value.lstrip().startswith(("{", "[")):
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    parsed = None
                for sub, found in _class_paths(parsed, key):
                    if not allowed(found):
                        _refuse(sub, found, "the command line")
        i += step
