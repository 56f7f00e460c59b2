"""User errors: problems with what a user gave a command (inputs, flags, output folders).

:class:`UserError` is what the ``collab-llm`` dispatcher (:mod:`collab_llm.cli`) turns into one line on
stderr and exit code :data:`USER_ERROR_EXIT` (2), without a traceback unless ``--debug`` is given or
``COLLAB_LLM_DEBUG=1``. It subclasses :class:`ValueError`, so code that catches ``ValueError`` keeps
working. Messages name the file (and line / column / value where there is one) and the command-line
flag that changes the behaviour.
"""

from __future__ import annotations

USER_ERROR_EXIT = 2


class UserError(ValueError):
    """A problem the user can fix (bad input file, bad flag, unsafe output folder)."""
