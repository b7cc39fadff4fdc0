"""Entry point of ``tiaki-node``: parse, dispatch, turn errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from node.cli import budget, import_records, info, init, ledger, serve, synth
from node.cli.errors import EXIT_CODES_HELP, CommandError, ExitCode, fail
from node.config import ConfigError
from node.ledger import LedgerError
from node.store import StoreError, StoreMissing
from tiaki import __version__, certs_cli
from tiaki.certs import CertError
from tiaki.errors import TiakiError
from tiaki.signing import SigningKeyError

COMMANDS = (init, synth, import_records, serve, budget, ledger, info, certs_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiaki-node",
        description="Run an NGO's tiaki node: it answers only differentially private "
        "aggregate queries over client records that never leave this server.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tiaki-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its message
        return int(exc.code or 0) and int(ExitCode.USAGE)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except CommandError as exc:
        fail(exc.message)
        return int(exc.code)
    except ConfigError as exc:
        fail(str(exc))
        return int(ExitCode.USAGE)
    except StoreMissing as exc:
        fail(str(exc))
        return int(ExitCode.NOT_READY)
    except (StoreError, LedgerError, CertError, SigningKeyError) as exc:
        fail(str(exc))
        return int(ExitCode.USAGE)
    except TiakiError as exc:
        fail(exc.message)
        return int(ExitCode.REJECTED)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: no traceback for users
        logging.getLogger("tiaki.node").debug("unexpected error", exc_info=True)
        fail(f"unexpected {type(exc).__name__}: {exc}. Run with --verbose for details.")
        return int(ExitCode.FAILED)


if __name__ == "__main__":
    sys.exit(main())
