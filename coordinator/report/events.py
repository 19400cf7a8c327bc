"""The fleet's event feed as data: a follower that keeps the recent events people care about.

The live view shows them; the HTTP API's event stream will send the same.
"""

from __future__ import annotations

from typing import Any

from ..store import Store

# Event kinds worth showing a person (state changes and process restarts); the rest are audit detail.
SHOWN_EVENTS = frozenset({"claimed", "done", "failed", "retrying", "reclaimed", "released", "fenced", "cancelled",
                          "retried", "agent_exited", "agent_spawned", "agent_hung"})


class RecentEvents:
    """Follows a store's feed from where it is now, keeping the last ``keep`` events of shown kinds."""

    def __init__(self, store: Store, keep: int = 50) -> None:
        self.store = store
        self.keep = keep
        self.cursor = store.event_cursor()
        self.events: list[dict[str, Any]] = []

    def refresh(self) -> list[dict[str, Any]]:
        """Read what is new; the recent shown events, oldest first."""
        new, self.cursor = self.store.read_events(self.cursor)
        shown = [event for event in new if event.get("event") in SHOWN_EVENTS]
        self.events = (self.events + shown)[-self.keep:]
        return self.events
