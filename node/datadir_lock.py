"""One serving process per data directory, held by an exclusive lock.

Two nodes answering from one ledger and one record store would each be
correct on their own (the ledger serialises charges across processes), but an
NGO that starts a second node by mistake, under another port or a second
service unit, would have two sets of grants, caps and reloads that disagree.
The lock makes that mistake loud: the second ``serve`` exits, naming the pid
that holds the directory.

The lock is ``flock`` on :attr:`NodePaths.serve_lock`: the kernel releases it when
the holder exits, however it exits, so a crashed node never leaves a stale
lock behind (the pid written into the file is only for the message).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from node.config import NodePaths


class DataDirBusy(Exception):
    """Another process already serves this data directory."""

    def __init__(self, data_dir: Path, holder: str) -> None:
        self.data_dir = data_dir
        self.holder = holder
        super().__init__(
            f"{data_dir} is already served by another tiaki-node process ({holder}); one data "
            "directory serves one node: stop that process first, or give this node its own "
            "data_dir"
        )


class DataDirLock:
    """Held while a node serves ``data_dir``; use as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.path = NodePaths(Path(data_dir)).serve_lock
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise DataDirBusy(
                self.path.parent, f"pid {holder}" if holder.isdigit() else "pid unknown"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
