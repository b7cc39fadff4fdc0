"""``tiaki-node`` that dies by SIGKILL right after its ledger commits a charge.

Used to prove that a crash between charge and reply leaves the charge on the
ledger, and that a retry of the same query id gets the stored answer.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from node.cli.main import main
from node.ledger import PrivacyLedger

_real_charge = PrivacyLedger.charge


def _charge_then_die(self: PrivacyLedger, **kwargs: Any) -> Any:
    result = _real_charge(self, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return result


PrivacyLedger.charge = _charge_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
