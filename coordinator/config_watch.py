"""Noticing that fleet.toml changed on disk, cheaply enough to ask every second or before every claim.

``ConfigWatch.changed`` costs one ``stat`` while nothing moved; when the file's
size, mtime or inode did, its bytes are read and hashed, and only a new hash counts
as a change (an editor that rewrites the same text, or ``touch``, is not one). The
gateway's reloader and every agent use it; what each does with a change (reload,
refuse an invalid file and keep the old settings) is theirs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class ConfigWatch:
    """Whether one file's content changed since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stat = self._signature()
        self.digest = self._digest()

    def changed(self) -> bool:
        """True once per change of content (a missing or unreadable file is not a change)."""
        signature = self._signature()
        if signature == self._stat:
            return False
        self._stat = signature
        digest = self._digest()
        if digest is None or digest == self.digest:
            return False
        self.digest = digest
        return True

    def mark_read(self) -> None:
        """The caller has just read the file itself (a forced reload): the next look starts from here."""
        self._stat = self._signature()
        self.digest = self._digest() or self.digest

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _digest(self) -> bytes | None:
        try:
            return hashlib.blake2b(self.path.read_bytes(), digest_size=16).digest()
        except OSError:
            return None
