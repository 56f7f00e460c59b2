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
