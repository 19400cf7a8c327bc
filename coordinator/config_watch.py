"""Noticing that fleet.toml changed on disk, cheaply enough to ask every second or before every claim.

``ConfigWatch.changed`` costs one ``stat`` while nothing moved; when the file's
size, mtime or inode did, its bytes are read and hashed, and only a new hash counts
as a change (an editor that rewrites the same text, or ``touch``, is not one). The
gateway's reloader and every agent use it; what each does with a change (reload,
refuse an invalid file and keep the old settings) is theirs.

A file written in the last ``SETTLE_S`` may be half written: an editor, or
``write_text``, truncates it first, and an empty fleet.toml is a valid one (all
defaults). So a change is taken only once the file has been quiet that long: the
gateway looks again next time; an agent (``wait=True``) waits for it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .clock import poll

SETTLE_S = 0.05
SETTLE_WAIT_S = 1.0  # an agent waits at most this long for a file that keeps changing


class ConfigWatch:
    """Whether one file's content changed since the last look; ``content`` is the bytes last seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.content: bytes | None = None
        self.digest: bytes | None = None
        self.see(*self.read())

    def changed(self, *, wait: bool = False) -> bool:
        """True once per change of content (a missing or unreadable file is not a change).

        A file still being written is no change yet: False now (``wait``: wait until it is quiet).
        """
        signature = self._signature()
        if signature == self._stat:
            return False
        if wait:
            for _ in poll(SETTLE_S / 2, timeout_s=SETTLE_WAIT_S):
                if not _is_fresh(self._signature()):
                    break
        content, signature = self.read()
        if _is_fresh(signature) or signature != self._signature():
            return False  # half written, perhaps: the next look reads it again
        self._stat = signature
        if content is None or _digest(content) == self.digest:
            return False
        self.see(content, signature)
        return True

    def read(self) -> tuple[bytes | None, tuple[int, int, int] | None]:
        """(the file's bytes, its stat signature taken before reading them): a write after the read moves
        the signature, so it is noticed; no state changes (safe on a worker thread)."""
        signature = self._signature()
        try:
            return self.path.read_bytes(), signature
        except OSError:
            return None, signature

    def see(self, content: bytes | None, signature: tuple[int, int, int] | None) -> None:
        """Remember ``content`` (as ``read`` returned it) as the file's current one."""
        self._stat = signature
        if content is not None:
            self.content, self.digest = content, _digest(content)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino


def _is_fresh(signature: tuple[int, int, int] | None) -> bool:
    """Whether the file was written within ``SETTLE_S`` (so it may still be being written)."""
    return signature is not None and 0 <= time.time_ns() - signature[0] < SETTLE_S * 1e9  # a future mtime: no


def _digest(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=16).digest()
