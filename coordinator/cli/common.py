"""What every ``tiaki`` command shares: the exit codes' words, the federation file.

The exit codes themselves and :class:`~tiaki.cli.exits.CommandError` are the
kernel's (:mod:`tiaki.cli.exits`), the same numbers as ``tiaki-node``'s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coordinator.combine import UNRELIABLE_SHARE
from coordinator.config import FederationConfig, load_federation
from coordinator.fanout import Federation
from tiaki.cli.exits import CommandError
from tiaki.node_info import NodeInfo

EXIT_CODES_HELP = """exit codes:
  0  success (a partial answer says which nodes it covers)
  1  unexpected internal error
  2  bad arguments, federation file, query file or query (nothing spent anywhere)
  3  refused: no node answered, or --require-all released nothing
  4  unreachable: no node could be contacted
  5  audit failed: tiaki audit found errors in the ledgers it was given
"""


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=Path("federation.yaml"),
        help="federation file (default: ./federation.yaml)",
    )


def open_federation(args: argparse.Namespace) -> tuple[FederationConfig, Federation]:
    config = load_federation(args.config)
    if not config.nodes:
        raise CommandError(f"{args.config}: no nodes yet; add one with 'tiaki nodes add'")
    names = getattr(args, "nodes", None)
    return config, Federation(config, names.split(",") if names else None)


def column_types(info: NodeInfo) -> dict[str, str]:
    return {c.name: c.type for c in info.columns}


def add_unreliable_share_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unreliable-share",
        type=_share,
        default=UNRELIABLE_SHARE,
        metavar="SHARE",
        help="flag a mean or proportion cell as unreliable when its 95%% interval spans more "
        f"than this share of the value range (default {UNRELIABLE_SHARE}); cells whose "
        "denominator interval reaches zero, or that were clamped to a bound, are always flagged",
    )


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number between 0 and 1") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share above 0 and at most 1")
    return value
