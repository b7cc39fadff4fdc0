"""Exit codes, the user-error base, and the one place errors become a message and a code.

Both programs share the numbers: scripts and the systemd unit rely on them
(``RestartPreventExitStatus=2 4``: a bad config or a node with no records is
not fixed by restarting). Each program words their meaning for its own help.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an unexpected internal error; no traceback, the message names its type
    USAGE = 2  # bad arguments or an invalid file (config, federation, query); nothing changed
    REFUSED = 3  # rejected or refused: bad input rows, a refused query, no node answered
    UNAVAILABLE = 4  # not ready or unreachable: no records imported yet, no node contacted
    AUDIT_FAILED = 5  # an audit found at least one error in the ledgers it was given
    INTERRUPTED = 130  # 128 + SIGINT, what a shell reports after Ctrl-C
    CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader left


class CommandError(Exception):
    """A failure to report to the person at the terminal, with its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


ErrorTypes: TypeAlias = type[Exception] | tuple[type[Exception], ...]


@dataclass(frozen=True)
class ErrorRule:
    """Errors of ``types`` (for which ``when`` holds, if given) exit with ``code``."""

    types: ErrorTypes
    code: ExitCode
    when: Callable[[Exception], bool] | None = None

    def __post_init__(self) -> None:
        if self.code in (ExitCode.OK, ExitCode.FAILED):
            raise ValueError(
                f"{self.types!r} cannot mean {self.code.name}: a mapped error is known"
            )

    def matches(self, error: Exception) -> bool:
        return isinstance(error, self.types) and (self.when is None or self.when(error))


@dataclass(frozen=True)
class ErrorTable:
    """Which of a program's own errors mean which exit code; the first rule that matches wins.

    Order matters where one type derives from another (a missing store is a
    store error): list the narrower first. A :class:`CommandError` always
    exits with its own code.
    """

    rules: Sequence[ErrorRule]

    def code_for(self, error: Exception) -> ExitCode | None:
        if isinstance(error, CommandError):
            return error.code
        return next((rule.code for rule in self.rules if rule.matches(error)), None)

    def codes(self) -> frozenset[ExitCode]:
        return frozenset(rule.code for rule in self.rules)


def say_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def exit_code(error: Exception, table: ErrorTable, unexpected_hint: str = "") -> ExitCode:
    """Say what went wrong in one ``error:`` line on stderr, and give its exit code.

    A mapped error is the user's to fix and says so in its own words; anything
    else is ours (FAILED), named by its type, never shown as a traceback.
    """
    code = table.code_for(error)
    if code is not None:
        say_error(str(error))
        return code
    logging.getLogger("tiaki.cli").debug("unexpected error", exc_info=error)
    say_error(f"unexpected {type(error).__name__}: {error}{unexpected_hint}")
    return ExitCode.FAILED
