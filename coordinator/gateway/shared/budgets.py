"""Budgets across gateways: the fleet's and each task's spend, and what is reserved, in Redis.

Admission stays local and synchronous (``budgets.Budgets.reserve``: this gateway's own
spend and holds, so a gateway cut off from Redis still enforces what it knows). What
makes a task's ``max_usd`` hold across hosts is one more step before a flight asks
who answers it (``flights``): ``hold`` runs ``lua/hold.lua``, which applies ``budgets.check_budget``'s
rule to the fleet-wide spend plus everything reserved on any gateway, and reserves the
call's estimate in the same script; ``settle`` drops the hold and adds what the call
really cost. Concurrency across hosts can then overshoot by one estimate, as on one.
A refusal is raised by ``check_budget`` itself from the figures the script returns,
so the 402 says the same thing on every host. Redis down: no shared hold, local only.

The shared spend is only as good as what Redis kept: after a flush (or on the first
start) each gateway adds its own ledger to it once (``seed``, ``lua/seed.lua``, marked
per host in the fleet's spend hash), so the fleet's and each task's spend are the sum
of every host's ledger again. A gateway seeds when a hold finds its mark missing, and
checks its mark at every link tick, so an idle host is counted within one tick too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...errors import BudgetError
from ..budgets import Budgets, Estimate, Reservation, check_budget
from .link import RedisLink, SharedDown

if TYPE_CHECKING:
    from ..accounting import Ledger
    from ..tokens import TokenClaims


@dataclass
class SharedReservation(Reservation):
    """A local reservation that also knows whose it is (the token's claims), for the shared steps."""

    claims: TokenClaims | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Hold:
    """A call's reservation in Redis, settled when the call ends."""

    keys: list[str]
    estimate: Estimate
    generation: int


def claims_of(reservation: Reservation) -> TokenClaims | None:
    """The token claims a request was admitted with (None for requests never billed)."""
    return getattr(reservation, "claims", None)


def _decimal(value: float) -> str:
    return f"{value:.12f}"


class SharedBudgets(Budgets):
    """``Budgets`` whose reservations carry their claims, plus the fleet-wide hold and settle."""

    def __init__(self, ledger: Ledger, link: RedisLink, host: str) -> None:
        super().__init__(ledger)
        self.link = link
        self.marker = f"h:{host}"  # this host's mark in the fleet's spend hash: its ledger is counted
        self.fleet_key = link.key("budget", "fleet")

    def reserve(self, claims: TokenClaims, estimate: Estimate) -> Reservation:
        """The local reservation (``Budgets.reserve``), remembering ``claims``."""
        local = super().reserve(claims, estimate)
        return SharedReservation(self, local.task, local.estimate, claims=claims)

    async def hold(self, reservation: Reservation) -> Hold | None:
        """Reserve a flight's estimate fleet-wide; BudgetError when it does not fit; None when nothing to hold."""
        claims = claims_of(reservation)
        fleet_max = self.ledger.config.fleet.max_usd
        task = None if claims is None else claims.task_id
        limited_task = task is not None and (claims.max_usd is not None or claims.max_tokens is not None)
        if claims is None or (fleet_max <= 0 and not limited_task):
            return None  # no budget applies: no round trip
        keys = [self.fleet_key] + ([self.link.key("budget", "task", task)] if task else [])
        estimate = reservation.estimate
        args = [_decimal(estimate.usd), str(estimate.tokens), _decimal(fleet_max), str(claims.generation),
                "" if claims.max_usd is None else _decimal(claims.max_usd),
                "" if claims.max_tokens is None else str(claims.max_tokens), self.marker]
        try:
            reply = await self.link.run(lambda: self.link.script("hold")(keys=keys, args=args))
            if reply[0] == b"unseeded":
                await self.seed()
                reply = await self.link.run(lambda: self.link.script("hold")(keys=keys, args=args))
        except SharedDown:
            return None
        if reply[0] != b"ok":
            self._refuse(reply, claims, estimate, fleet_max)
        return Hold(keys, estimate, int(float(reply[1])))

    @staticmethod
    def _refuse(reply: list[Any], claims: TokenClaims, estimate: Estimate, fleet_max: float) -> None:
        if reply[0] == b"fleet":
            check_budget(fleet_spent=float(reply[1]), fleet_max=fleet_max, task_id=None, task_spent=None,
                         max_usd=None, max_tokens=None, estimate_usd=estimate.usd)
        else:
            check_budget(fleet_spent=0.0, fleet_max=0.0, task_id=claims.task_id,
                         task_spent=(float(reply[1]), int(float(reply[2]))), max_usd=claims.max_usd,
                         max_tokens=claims.max_tokens, estimate_usd=estimate.usd,
                         estimate_tokens=estimate.tokens if claims.max_tokens is not None else 0)
        # The script and check_budget apply one rule; a float rounding apart still refuses.
        raise BudgetError(f"the shared budget refused this request ({reply[0].decode()}); raise its max_usd",
                          scope=reply[0].decode(), limit=fleet_max)

    async def seed(self) -> bool:
        """Add this host's ledger to the shared spend unless it is counted already; whether it added."""
        budgets = list(self.ledger.generations.items())
        keys = [self.fleet_key] + [self.link.key("budget", "task", task) for task, _ in budgets]
        args = [self.marker, _decimal(self.ledger.totals["usd"])]
        for _, (generation, usd, tokens) in budgets:
            args += [str(int(generation)), _decimal(usd), str(int(tokens))]
        return bool(await self.link.run(lambda: self.link.script("seed")(keys=keys, args=args)))

    async def check_seeded(self) -> None:
        """At a link tick: seed if this host's mark is gone (a flush); SharedDown while Redis is away."""
        if not await self.link.run(lambda: self.link.client.hexists(self.fleet_key, self.marker)):
            await self.seed()

    async def settle(self, hold: Hold | None, usd: float, tokens: int) -> None:
        """Drop ``hold`` and add what its call cost (nothing when Redis is down: the local ledger has it)."""
        if hold is None:
            return
        args = [_decimal(hold.estimate.usd), str(hold.estimate.tokens), _decimal(usd), str(tokens),
                str(hold.generation)]
        try:
            await self.link.run(lambda: self.link.script("settle")(keys=hold.keys, args=args))
        except SharedDown:
            return
