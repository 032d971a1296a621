"""One run at a time per table.

Two concurrent `merge_insert`s of the same new key both insert it (duplicate rows), so a
run holds `<sink.uri>/_locks/<table>.lock` from before its first read until its indexes
are built. The file is created exclusively (O_EXCL) and names its holder; a second run
waits up to `sink.lock_wait_seconds`, then fails naming that holder. A lock left by a
run that died on this host (its process is gone) is taken over, with a warning.

Object-store tables are not locked yet: S3/GCS have no exclusive create through pyarrow,
and a wrong lock is worse than none; the run says so in the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from babelray.config import SinkConfig

logger = logging.getLogger(__name__)
POLL_SECONDS = 1.0


class TableLocked(RuntimeError):
    """Another run holds the table."""


def lock_path(cfg: SinkConfig) -> Path | None:
    if "://" in cfg.uri and not cfg.uri.startswith("file://"):
        return None
    return Path(cfg.uri.removeprefix("file://")) / "_locks" / f"{cfg.table}.lock"


@contextlib.contextmanager
def table_lock(cfg: SinkConfig, run_id: str) -> Iterator[None]:
    path = lock_path(cfg)
    if path is None:
        logger.warning("%s: object-store tables are not locked; do not start two runs against %r at once",
                       cfg.uri, cfg.table)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
              "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    deadline = time.monotonic() + cfg.lock_wait_seconds
    while not _try_create(path, holder):
        other = _read(path)
        if other is not None and _is_dead(other):
            logger.warning("taking over the lock of run %s (pid %s on %s is gone)", other.get("run_id"),
                           other.get("pid"), other.get("host"))
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        if time.monotonic() >= deadline:
            who = (f"run {other.get('run_id')} (pid {other.get('pid')} on {other.get('host')}, since "
                   f"{other.get('since')})") if other else "another run"
            raise TableLocked(f"table {cfg.table!r} in {cfg.uri} is being written by {who}; wait for it, raise "
                              f"sink.lock_wait_seconds, or remove {path} if that run is gone")
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        if (_read(path) or {}).get("run_id") == run_id:
            path.unlink(missing_ok=True)


def _try_create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(holder, handle)
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None  # gone meanwhile, or being written: look again


def _is_dead(holder: dict) -> bool:
    """Only a process on this host can be checked; another host's lock is never taken over."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
