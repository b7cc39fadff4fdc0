"""A program as data, and the one ``main`` both programs run.

``main`` parses the command line, sets up logging, runs the command, writes
the view it returned, and turns whatever went wrong into one ``error:`` line
and an exit code. It never raises (not even ``SystemExit``) and never shows
a traceback.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from tiaki import __version__
from tiaki.cli.exits import ErrorTable, ExitCode, exit_code
from tiaki.cli.views import Outcome, View, as_outcome

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
# What a command module offers: ``register(sub)`` adds its parser(s), each with
# ``set_defaults(run=<a Command>)``.
Register: TypeAlias = Callable[[Subcommands], None]
Command: TypeAlias = Callable[[argparse.Namespace], View | Outcome]


def runs(parser: argparse.ArgumentParser, command: Command) -> None:
    """Make ``command`` what ``parser``'s command line runs (typed, unlike ``set_defaults``)."""
    parser.set_defaults(run=command)


@dataclass(frozen=True)
class Program:
    """One command-line program: its words, its commands and what its errors mean.

    ``epilog`` explains the exit codes in the program's own words, and must
    list every code its error table can give. ``number_list_options`` take a
    value that may start with a minus (``--bounds -4,4``), which argparse
    would otherwise read as an option.
    """

    name: str
    description: str
    epilog: str
    commands: Sequence[Register]
    errors: ErrorTable
    unexpected_hint: str = ""
    number_list_options: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.commands:
            raise ValueError(f"{self.name} has no commands")
        documented = {ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, *self.errors.codes()}
        missing = [c for c in sorted(documented) if f"\n  {int(c)}  " not in f"\n{self.epilog}"]
        if missing:
            raise ValueError(f"{self.name}'s epilog does not explain exit codes {missing}")

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.name,
            description=self.description,
            epilog=self.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=f"{self.name} {__version__}")
        sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        for register in self.commands:
            register(sub)
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        words = sys.argv[1:] if argv is None else argv
        try:
            args = self.parser().parse_args(self._attach_negative_values(words))
        except SystemExit as exc:  # argparse has printed its message (or the help)
            return int(exc.code or 0) and int(ExitCode.USAGE)
        logging.basicConfig(
            level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        command: Command = args.run
        try:
            outcome = as_outcome(command(args))
            if outcome.view is not None:
                outcome.view.show(sys.stdout)
                sys.stdout.flush()
            if outcome.note:
                print(outcome.note, file=sys.stderr)
            return int(outcome.code)
        except BrokenPipeError:
            return _closed_pipe()
        except KeyboardInterrupt:
            return int(ExitCode.INTERRUPTED)
        except Exception as exc:
            return int(exit_code(exc, self.errors, self.unexpected_hint))

    def _attach_negative_values(self, argv: Sequence[str]) -> list[str]:
        """``--bounds -4,4`` becomes ``--bounds=-4,4``, which argparse reads as meant."""
        out: list[str] = []
        items = list(argv)
        i = 0
        while i < len(items):
            if (
                items[i] in self.number_list_options
                and i + 1 < len(items)
                and items[i + 1][:2] != "--"
            ):
                out.append(f"{items[i]}={items[i + 1]}")
                i += 2
                continue
            out.append(items[i])
            i += 1
        return out


def _closed_pipe() -> int:
    """The reader of our output went away (``... | head``): stop quietly.

    Whatever a command recorded is already durable. Point stdout at /dev/null
    so the interpreter's final flush cannot complain, and exit as a Unix tool
    killed by SIGPIPE would.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file descriptor (an in-process caller); nothing to flush
    return int(ExitCode.CLOSED_PIPE)
