"""Entry point of ``tiaki``: its words, its commands, and what its errors mean."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from coordinator.cli import audit, budget, history, ledger, nodes, query, show
from coordinator.cli.common import EXIT_CODES_HELP
from coordinator.config import FederationConfigError
from coordinator.mirror import MirrorError
from coordinator.output import OutputError
from coordinator.query_files import QueryFileError
from tiaki.certs import CertError
from tiaki.cli import certs
from tiaki.cli.exits import ErrorRule, ErrorTable, ExitCode
from tiaki.cli.program import Program
from tiaki.errors import TiakiError
from tiaki.ledger_export import ExportFormatError
from tiaki.signing import SigningKeyError


def _from_a_node(error: Exception) -> bool:
    """A node's error (it carries the node's address), not one raised here."""
    return getattr(error, "node", None) is not None


PROGRAM = Program(
    name="tiaki",
    description="Ask a federation of tiaki nodes differentially private questions and get "
    "one combined answer with honest error bars.",
    epilog=EXIT_CODES_HELP,
    commands=(
        nodes.register,
        query.register,
        history.register,
        show.register,
        budget.register,
        ledger.register,
        audit.register,
        certs.register,
    ),
    errors=ErrorTable(
        [
            # Output and query file errors are tiaki errors too, always ours: before TiakiError.
            ErrorRule(
                (
                    FederationConfigError,
                    QueryFileError,
                    OutputError,
                    MirrorError,
                    CertError,
                    SigningKeyError,
                    ExportFormatError,
                ),
                ExitCode.USAGE,
            ),
            ErrorRule(TiakiError, ExitCode.REFUSED, when=_from_a_node),
            ErrorRule(TiakiError, ExitCode.USAGE),
        ]
    ),
    number_list_options=("--bounds", "--bins"),
)


def build_parser() -> argparse.ArgumentParser:
    return PROGRAM.parser()


def main(argv: Sequence[str] | None = None) -> int:
    return PROGRAM.main(argv)


if __name__ == "__main__":
    sys.exit(main())
