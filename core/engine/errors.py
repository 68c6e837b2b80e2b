"""One error style for every console script: one line, exit code 2."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Optional

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
    """Decorate a console-script ``main``: turn :class:`UserError` into one line + exit 2.

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
        code = 0 if code is None else int(code)
        if code:
            sys.exit(code)
        return 0

    return wrapper
