"""One error style for every console script.

Exit codes: 0 all done; 2 bad input (one line naming the file and the problem), including "some
items failed, the rest were written"; 1 an internal error (a bug). ``SSM_DEBUG=1`` shows tracebacks.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Optional

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A problem with the user's input or files, reported as one line.

    ``UserError("scan.nii.gz", "not a NIfTI file")`` reads
    ``scan.nii.gz: not a NIfTI file``; with one argument the message is used as is.
    """

    def __init__(self, where: object, problem: Optional[str] = None):
        msg = str(where) if problem is None else f"{where}: {problem}"
        super().__init__(" ".join(msg.split()))  # keep it on one line


def cli_main(fn: Callable[..., Optional[int]]) -> Callable[..., int]:
    """Decorate a console-script ``main``: :class:`UserError` becomes one line + exit 2; any other
    exception (a bug) one line + exit 1; the function's own return value is the exit code.

    Set ``SSM_DEBUG=1`` to see the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("SSM_DEBUG") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:  # a bug: say so in one line, keep the traceback for SSM_DEBUG=1
            if os.environ.get("SSM_DEBUG") == "1":
                raise
            first = (str(e).splitlines() or [""])[0][:300]
            print(f"internal error: {type(e).__name__}: {first} (this is a bug; SSM_DEBUG=1 shows the "
                  "traceback)", file=sys.stderr)
            sys.exit(EXIT_INTERNAL)
        code = 0 if code is None else int(code)
        if code:
            sys.exit(code)
        return 0

    return wrapper
