"""The configuration one request runs on, from its admission to its last byte.

A ``Snapshot`` pairs one parsed fleet.toml with what serving it needs: the routing
table (``routing.py``), one ``Upstream`` per ``[backends.*]`` table, and the hops of
each routed target per wire API (built on first use, then kept). The gateway swaps
in a new snapshot when fleet.toml is reloaded (``reload.py``); a request keeps the
one it was admitted on, and each flight counts as one of its ``users`` until it
ends, so the backends only an old snapshot used are closed once it is idle.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..config import FleetConfig
from .accounting import FREE, Price
from .dialects import Dialect
from .pipeline import Hop, Upstream
from .routing import RoutingTable, Target

_MAX_CACHED = 10_000


class Snapshot:
    """One configuration generation: its config, routing table and upstreams."""

    def __init__(self, generation: int, config: FleetConfig, upstreams: Mapping[str, Upstream],
                 table: RoutingTable | None = None, *, loaded_at: float = 0.0) -> None:
        self.generation = generation
        self.config = config
        self.upstreams = dict(upstreams)
        self.table = table or RoutingTable(config)
        self.loaded_at = loaded_at
        self.users = 0  # flights running on this snapshot
        self._hops: dict[tuple[Target, str], list[Hop]] = {}

    def billing_price(self, target: Target) -> Price:
        """What a call to ``target`` bills: $0 on a free backend (echo), else the alias's price."""
        return FREE if self.upstreams[target.backend].backend.kind == "echo" else target.price

    def hops(self, target: Target, dialect: Dialect) -> list[Hop]:
        """``target``'s chain on ``dialect``'s API: hops whose backend speaks it; [] if ``target``'s does not."""
        key = (target, dialect.name)
        found = self._hops.get(key)
        if found is None:
            found = []
            if self.upstreams[target.backend].serves(dialect):
                found = [self._hop(hop) for hop in self.table.chain(target)
                         if self.upstreams[hop.backend].serves(dialect)]
            if len(self._hops) >= _MAX_CACHED:  # free-form model names must not grow it forever
                self._hops.clear()
            self._hops[key] = found
        return found

    def _hop(self, target: Target) -> Hop:
        upstream = self.upstreams[target.backend]
        free = upstream.backend.kind == "echo"
        return Hop(target, upstream, FREE if free else target.price, target.price if free else None,
                   identity=f"{target.alias}\0{target.model}\0{upstream.name}#{upstream.serial}")

    def model_entries(self, created: int) -> list[tuple[str, str, int]]:
        """The configured aliases for ``GET /v1/models``: (alias, "alias → upstream model", created)."""
        return [(name, f"{name} → {self.table.target(name).model}", created) for name in self.config.models]
