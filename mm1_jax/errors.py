"""The one family of user-facing errors, and how every command reports them.

An `Error` is a mistake the user can fix (a config key, a file, a checkpoint, an evaluation
set): its message names the key or the file and says what to do, and every command prints it as
one line, `error: <message>`, and exits with status 2 (`cli`). Anything else that escapes
a command is a bug in mm1_jax and keeps its traceback.

The families below split `Error` by where the mistake is; each also derives from the builtin a
caller would catch without knowing mm1_jax (ValueError for bad values, RuntimeError for a run
that cannot go on).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NoReturn

EXIT_USER_ERROR = 2


class Error(Exception):
    """A user-facing error: one line naming the key or file, and the fix."""


class ConfigError(Error, ValueError):
    """A config that cannot describe a valid model or run; the message names the key."""


class DataError(Error, ValueError):
    """Input data (records, shards, corpora, tokenizers) that cannot be used; names the file."""


class CheckpointError(Error, ValueError):
    """A checkpoint that cannot be restored or written; names the directory."""


class EvalDataError(DataError):
    """An evaluation file (annotations, questions, images) that cannot be read; names it."""


class RunError(Error, RuntimeError):
    """A run that cannot go on (it diverged, or the data disagrees with the model); says at
    which step."""


def report(e: Error) -> NoReturn:
    """Prints `e` as one line on stderr and exits with EXIT_USER_ERROR."""
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def cli(main: Callable[..., Any]) -> Callable[..., Any]:
    """`main` as a command's entry point: user-facing errors are reported as one line (exit
    status 2), bugs keep their traceback. `app.run(cli(main))` for absl commands,
    `cli(main)()` for argparse ones."""

    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Error as e:
            report(e)

    return guarded
