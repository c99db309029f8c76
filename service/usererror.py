"""Mistakes the person at the command line can fix, and how the CLI says them.

Every `imgclf` command ends a failure with one line naming the file, port or flag at fault,
and a hint line saying what to do; exit status 2 for a usage mistake, 1 for anything else.
`--debug` adds the traceback. Code that knows what went wrong raises UserError; anything else
that escapes a command is still said in one line (its type and message) with a pointer to
`--debug`.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TextIO

from imgclf.protoversion import describe, is_version_error

USAGE = 2
FAILURE = 1
DEBUG_FLAG = "--debug"
DEBUG_HINT = f"run again with {DEBUG_FLAG} for the traceback"


class UserError(Exception):
    """A mistake said in one line (`message`), with what to do about it (`hint`)."""

    def __init__(self, message: str, hint: str = "", code: int = FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


def one_line(text: str) -> str:
    """`text` with its whitespace (newlines included) collapsed."""
    return " ".join(str(text).split())


def report(exc: BaseException, prog: str, debug: bool, out: TextIO | None = None) -> int:
    """Print `exc` as `prog: message` and `  hint: ...` (the traceback first with `debug`);
    returns the exit status."""
    out = out or sys.stderr
    if debug:
        traceback.print_exception(exc, file=out)
    if isinstance(exc, UserError):
        message, hint, code = exc.message, exc.hint, exc.code
    elif is_version_error(exc):
        (message, hint), code = describe(exc), FAILURE
    else:
        text = one_line(str(exc))
        message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        hint, code = ("" if debug else DEBUG_HINT), FAILURE
    print(f"{prog}: {one_line(message)}", file=out)
    if hint:
        print(f"  hint: {one_line(hint)}", file=out)
    return code


def run_main(
    prog: str, main: Callable[[list[str]], int | None], argv: list[str] | None = None
) -> int:
    """Run a command's `main` the way `imgclf` does (for `python -m imgclf.training.train` and the
    like): `--debug` taken off the arguments, a failure reported by `report`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv
    try:
        return int(main([a for a in argv if a != DEBUG_FLAG]) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return report(exc, prog, debug)


def warn(message: str, hint: str = "", out: TextIO | None = None) -> None:
    """A surprise worth a line that does not stop the command."""
    out = out or sys.stderr
    print(f"warning: {one_line(message)}", file=out)
    if hint:
        print(f"  hint: {one_line(hint)}", file=out)
