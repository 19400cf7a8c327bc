"""The merge queue as ``status`` shows it (DESIGN §8, docs/workspaces.md), as plain data.

Built from what the store already holds: each agent's heartbeat says where its
landing is (gating, landing, or held and why), and the records say what landed
and how many conflicts there were. Nothing here runs git, so ``status`` stays fast.
"""

from __future__ import annotations

from typing import Any

from ..liveness import HOST, process_is_alive
from ..store import Store

PHASES = ("gating", "landing", "held")


def merge_queue(store: Store) -> dict[str, Any]:
    """``{"waiting", "gating", "held", "landed", "conflicts", "last_landed"}``."""
    notes = [a["landing"] for a in store.read_agents() if _is_live(a) and isinstance(a.get("landing"), dict)
             and a["landing"].get("phase") in PHASES]
    gating = next((n["task"] for n in notes if n["phase"] == "gating"), None)
    held = next(({"task": n["task"], "reason": n.get("reason")} for n in notes if n["phase"] == "held"), None)
    landed, conflicts, last = 0, 0, None
    for record in store.iter_records():
        conflicts += record.conflicts
        if record.landed is not None and record.state == "done":
            landed += 1
            if last is None or (record.finished_at or 0) > last["at"]:
                last = {"task": record.id, "commit": record.landed, "at": record.finished_at or 0}
    return {"waiting": len(notes), "gating": gating, "held": held, "landed": landed, "conflicts": conflicts,
            "last_landed": last}


def _is_live(agent: dict[str, Any]) -> bool:
    """An agent process still running on this host (a dead one's last note is history, not queue)."""
    return agent.get("host") == HOST and process_is_alive(int(agent.get("pid", 0)),
                                                          float(agent.get("pid_started_at", 0.0)))
