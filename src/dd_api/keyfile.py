"""A 32-byte secret kept in a file of its own, created on first use (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class DamagedKeyFile(ValueError):
    pass


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``; a new random one, written exclusively, if there is none yet.

    Of two processes starting at once, one creates the file and both read the same key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise DamagedKeyFile(f"{path.name} is damaged") from None
        return key
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
        handle.flush()
        os.fsync(handle.fileno())
    return key
