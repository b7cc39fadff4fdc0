"""Entry point of ``tiaki-node``: its words, its commands, and what its errors mean."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from node.cli import budget, import_records, info, init, ledger, serve, synth
from node.config import ConfigError
from node.ledger import LedgerError
from node.store import StoreError, StoreMissing
from tiaki.certs import CertError
from tiaki.cli import certs
from tiaki.cli.exits import ErrorRule, ErrorTable, ExitCode
from tiaki.cli.program import Program
from tiaki.errors import TiakiError
from tiaki.signing import SigningKeyError

EXIT_CODES_HELP = """exit codes:
  0  success
  1  unexpected internal error
  2  bad arguments or invalid config file (nothing changed)
  3  rejected: bad input rows or a refused query (nothing changed, nothing spent)
  4  not ready: no records imported yet, or the node cannot be reached
"""

PROGRAM = Program(
    name="tiaki-node",
    description="Run an NGO's tiaki node: it answers only differentially private "
    "aggregate queries over client records that never leave this server.",
    epilog=EXIT_CODES_HELP,
    commands=(
        init.register,
        synth.register,
        import_records.register,
        serve.register,
        budget.register,
        ledger.register,
        info.register,
        certs.register,
    ),
    errors=ErrorTable(
        [
            ErrorRule(ConfigError, ExitCode.USAGE),
            ErrorRule(StoreMissing, ExitCode.UNAVAILABLE),  # before StoreError, which it is
            ErrorRule((StoreError, LedgerError, CertError, SigningKeyError), ExitCode.USAGE),
            ErrorRule(TiakiError, ExitCode.REFUSED),
        ]
    ),
    unexpected_hint=". Run with --verbose for details.",
)


def build_parser() -> argparse.ArgumentParser:
    return PROGRAM.parser()


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
