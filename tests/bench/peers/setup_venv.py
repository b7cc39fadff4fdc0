"""Make one peer's virtual environment under ``.venv-peers/`` from its pinned requirements.

Run by ``make bench-peers`` (standard library only, with the Python that makes
the environment)::

    python3 -m tests.bench.peers.setup_venv tumult|smartnoise

Tumult Analytics and SmartNoise SQL pin versions that conflict with tiaki's
and with each other, so each gets an environment of its own. If one cannot be
made here (no ``venv`` module, an unsupported Python, no network, a failed
build), the reason goes to ``.venv-peers/<name>/unavailable.txt`` and the
command still succeeds: the benchmarks then report that peer as not
available, with the reason, instead of stopping. The next ``make bench``
tries again. ``.venv-peers/<name>/.installed`` marks success.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
PEERS = ("tumult", "smartnoise")


def _fail(venv: Path, reason: str) -> int:
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "unavailable.txt").write_text(reason + "\n", encoding="utf-8")
    print(f"{venv.name}: not available: {reason}", file=sys.stderr)
    return 0


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return " ".join((errors or lines or ["no output"])[-1].split())[:300]


def setup(name: str) -> int:
    venv = ROOT / ".venv-peers" / name
    requirements = HERE / f"{name}-requirements.txt"
    stamp, reason = venv / ".installed", venv / "unavailable.txt"
    reason.unlink(missing_ok=True)
    stamp.unlink(missing_ok=True)
    python = venv / "bin" / "python"
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)  # a half-made one from an interrupted run
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if made.returncode != 0:
            return _fail(venv, f"could not make a virtual environment: {_last_error(made.stderr)}")
    print(f"installing {requirements.name} into {venv.relative_to(ROOT)} ...", flush=True)
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        str(requirements),
    ]
    installed = subprocess.run(pip, capture_output=True, text=True)
    if installed.returncode != 0:
        version = ".".join(map(str, sys.version_info[:2]))
        return _fail(
            venv,
            f"pip install -r {requirements.name} failed under Python {version}: "
            f"{_last_error(installed.stderr + installed.stdout)}",
        )
    stamp.touch()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in PEERS:
        print(f"usage: setup_venv.py {'|'.join(PEERS)}", file=sys.stderr)
        return 2
    return setup(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
