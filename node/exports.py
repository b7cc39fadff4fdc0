"""The node's signed ledger export: what an auditor receives from ``ExportLedger``.

The export is the ledger's hash chain in the format of
:mod:`tiaki.ledger_export`, signed with the node's Ed25519 key. It holds each
charged query's canonical text, identity, analyst, cost and a hash of the
released answer; never a record, and never the noisy answer itself. Exporting
spends nothing. The signing key is chained (a ``signing_key`` entry) before
it signs, so a change of key is part of the history an auditor checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from node.config import NodeConfig
from node.ledger import PrivacyLedger
from tiaki.chain import chain_time
from tiaki.ledger_export import export_lines
from tiaki.signing import SigningKey, load_or_create_signing_key


def signing_key_path(config: NodeConfig) -> Path:
    return config.paths.signing_key


def node_signing_key(config: NodeConfig) -> tuple[SigningKey, bool]:
    """The node's ledger signing key, created (0600) if it has none yet; ``(key, created)``."""
    return load_or_create_signing_key(signing_key_path(config))


def export_ledger(
    ledger: PrivacyLedger, key: SigningKey, config: NodeConfig, from_seq: int = 1
) -> Iterator[str]:
    """The lines of a signed export of entries ``from_seq`` on (each without its newline).

    The entries are read as one snapshot before the first line is produced,
    so queries answered while the export streams are simply not in it.
    """
    ledger.record_signing_key(key.public_text)
    (anchor_seq, anchor), entries = ledger.chain(from_seq)
    exported_at = chain_time(datetime.now(UTC))
    return export_lines(
        source="node",
        subject=config.node_id,
        ledger_id=ledger.ledger_id,
        definition=config.policy.privacy_definition.value,
        policy=ledger.policy_record().body(),
        entries=entries,
        anchor=anchor,
        from_seq=anchor_seq + 1,
        to_seq=entries[-1].seq if entries else anchor_seq,
        exported_at=exported_at,
        key=key,
    )
