"""User errors: problems with what a user gave a command (inputs, flags, output folders).

:class:`UserError` is what the ``collab-llm`` dispatcher (:mod:`collab_llm.cli`) turns into one line on
stderr and exit code :data:`USER_ERROR_EXIT` (2), without a traceback unless ``--debug`` is given or
``COLLAB_LLM_DEBUG=1``. It subclasses :class:`ValueError`, so code that catches ``ValueError`` keeps
working. Messages name the file (and line / column / value where there is one) and the command-line
flag that changes the behaviour.
"""

from __future__ import annotations

from typing import Mapping

USER_ERROR_EXIT = 2


class UserError(ValueError):
    """A problem the user can fix (bad input file, bad flag, unsafe output folder)."""


def user_error_in(error: BaseException) -> "UserError | FileNotFoundError | None":
    """The :class:`UserError` (or ``FileNotFoundError``: a missing input the user named) that caused ``error``
    (following ``__cause__`` / ``__context__``), if any.

    Config parsers (jsonargparse, under LightningCLI) wrap what a class raises while being built in their own
    multi-line ``ValueError``; the dispatcher reports the user error underneath as its one line.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (UserError, FileNotFoundError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def require_at_least_one(values: Mapping[str, int]) -> None:
    """Refuse counts below 1: ``values`` maps each flag (``--data.batch_size``) to its value; the
    :class:`UserError` names every flag at fault and its value."""
    bad = [f"{flag} must be >= 1, got {value}" for flag, value in values.items() if value < 1]
    if bad:
        raise UserError("; ".join(bad))


def condensed_parser_error(message: str, prog: str) -> str:
    """One line from a jsonargparse error ``message`` (which nests ``Parser key "model":`` / ``Parser key
    "projector":`` blocks around the reason): the flag (``--model.projector``), the innermost reason and
    where the options are listed."""
    import re

    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = re.findall(r'Parser key "([^"]+)"', message)
    skip = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>",
            "- Problem with given class_path")
    reasons = [line.lstrip("- ") for line in lines if not line.startswith(skip)]
    reason = reasons[-1] if reasons else (lines[0] if lines else "invalid arguments")
    path: list[str] = []
    for key in keys:  # nested blocks repeat the tail of the key path ("adapter.r", then "r")
        parts = [k for k in key.split(".") if k != "init_args"]
        if path[-len(parts):] != parts:
            path += parts
    flag = "--" + ".".join(path) if path else ""
    where = f"{flag}: " if flag else ""
    return f"{where}{reason} (the options: {prog} --help)"


def one_line_parser_errors(parser, prog: str) -> None:  # noqa: ANN001 - a jsonargparse ArgumentParser
    """Make ``parser`` (LightningCLI's, jsonargparse) report a bad flag or config value as a :class:`UserError`
    (one line, exit code 2 through the ``collab-llm`` dispatcher; the traceback with ``--debug``) instead of its
    usage text and a multi-line message. Parsers that do not exit on error (jsonargparse's own trial parses)
    keep their behaviour."""
    original = parser.error

    def error(message: str, ex: Exception | None = None):  # noqa: ANN202 - NoReturn
        if not parser.exit_on_error:
            return original(message, ex)
        raise UserError(condensed_parser_error(message, prog)) from ex

    parser.error = error
