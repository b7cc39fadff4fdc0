"""Entry point of ``tiaki``: parse, dispatch, and turn errors into exit codes."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence

from coordinator.cli import audit, budget, history, ledger, nodes, query, show
from coordinator.cli.common import EXIT_CODES_HELP, CommandError, ExitCode
from coordinator.config import FederationConfigError
from coordinator.mirror import MirrorError
from coordinator.output import OutputError
from coordinator.query_files import QueryFileError
from tiaki import __version__, certs_cli
from tiaki.certs import CertError
from tiaki.errors import TiakiError
from tiaki.ledger_export import ExportFormatError
from tiaki.signing import SigningKeyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiaki",
        description="Ask a federation of tiaki nodes differentially private questions and get "
        "one combined answer with honest error bars.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tiaki {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (nodes, query, history, show, budget, ledger, audit, certs_cli):
        command.register(sub)
    return parser


_NUMBER_LIST_OPTIONS = ("--bounds", "--bins")
SIGPIPE_EXIT = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader left


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--bounds -4,4`` reads as an option to argparse; make it ``--bounds=-4,4``."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i] in _NUMBER_LIST_OPTIONS and i + 1 < len(items) and items[i + 1][:2] != "--":
            out.append(f"{items[i]}={items[i + 1]}")
            i += 2
            continue
        out.append(items[i])
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0) and int(ExitCode.USAGE)
    try:
        return int(args.run(args))
    except BrokenPipeError:
        return _closed_pipe()
    except CommandError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except (
        FederationConfigError,
        QueryFileError,
        OutputError,
        MirrorError,
        CertError,
        SigningKeyError,
        ExportFormatError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except TiakiError as exc:  # a node's (it names the node), else ours
        print(f"error: {exc.message}", file=sys.stderr)
        return int(ExitCode.REFUSED if exc.node is not None else ExitCode.USAGE)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # no traceback for users
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return int(ExitCode.FAILED)


def _closed_pipe() -> int:
    """The reader of our output went away (``tiaki query ... | head``): stop quietly.

    Whatever was paid for is already in the mirror ledger. Point stdout at
    /dev/null so the interpreter's final flush cannot complain, and exit as a
    Unix tool killed by SIGPIPE would.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file descriptor (an in-process caller); nothing to flush
    return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
