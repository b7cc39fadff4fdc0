"""Exit codes, and the one place errors become messages and codes."""

from __future__ import annotations

import sys
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an unexpected internal error; the message says where to look
    USAGE = 2  # bad arguments or an invalid config file
    REJECTED = 3  # import refused bad rows (nothing changed) or a query was refused
    NOT_READY = 4  # no records imported yet, or the node is unreachable


EXIT_CODES_HELP = """exit codes:
  0  success
  1  unexpected internal error
  2  bad arguments or invalid config file (nothing changed)
  3  rejected: bad input rows or a refused query (nothing changed, nothing spent)
  4  not ready: no records imported yet, or the node cannot be reached
"""


class CommandError(Exception):
    """A failure to report to the person at the terminal, with its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
