"""``tiaki show``: a past answer again, from the mirror ledger, without asking any node."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from coordinator.answer_plot import plot
from coordinator.cli.common import add_config_argument, add_unreliable_share_argument
from coordinator.config import load_federation
from coordinator.federated import UnknownQuestion, past_answer
from coordinator.mirror import MirrorLedger
from coordinator.output import OutputError, federated_csv, federated_json, federated_table
from coordinator.results import FederatedAnswer
from tiaki.cli.exits import CommandError, ExitCode
from tiaki.cli.program import Subcommands, runs


def register(sub: Subcommands) -> None:
    p = sub.add_parser(
        "show",
        help="show a past answer again (from the mirror ledger; asks no node, spends nothing)",
        description="Render an answer this coordinator received before, as table, JSON, CSV "
        "or plot. The answer is combined again from the node answers the mirror ledger kept: "
        "no node is asked and nothing is spent.",
    )
    add_config_argument(p)
    p.add_argument("query_id", help="the question's query id (see 'tiaki history')")
    p.add_argument("--format", choices=("table", "json", "csv"), help="output format")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="bar chart with error bars")
    add_unreliable_share_argument(p)
    runs(p, run)


@dataclass(frozen=True)
class AnswerView:
    """A combined answer in ``fmt`` (table, json or csv), then its plot if one is asked for.

    Written only once the answer is durable in the mirror ledger: if writing
    fails, the message says how to get the answer again.
    """

    answer: FederatedAnswer
    fmt: str
    plot_path: Path | None = None

    def show(self, out: TextIO) -> None:
        answer = self.answer
        try:
            if self.fmt == "json":
                out.write(federated_json(answer) + "\n")
            elif self.fmt == "csv":
                out.write(federated_csv(answer))
            else:
                out.write(federated_table(answer) + "\n")
            out.flush()
            if self.plot_path is not None and answer.released and answer.cells:
                plot(answer, self.plot_path)
                print(f"plot written to {self.plot_path}", file=sys.stderr)
        except OutputError as exc:
            raise CommandError(
                f"{exc}. The answer is kept in the mirror ledger: 'tiaki show {answer.query_id} "
                "--plot FILE.png' draws it again without asking any node"
            ) from None
        except KeyboardInterrupt:
            print(
                f"\ninterrupted; the answer is kept: 'tiaki show {answer.query_id}' shows it again",
                file=sys.stderr,
            )
            raise


def run(args: argparse.Namespace) -> AnswerView:
    config = load_federation(args.config)
    with MirrorLedger(config.ledger) as mirror:
        try:
            answer = past_answer(mirror, args.query_id, args.unreliable_share)
        except UnknownQuestion as exc:
            raise CommandError(exc.message, ExitCode.USAGE) from None
    return AnswerView(answer, args.format or config.defaults.format, args.plot)
