"""Budgets: the one rule that refuses a request, and reservations that make it hold under concurrency.

A request reserves its estimated cost at admission (its input estimate plus its
``max_tokens``, at the alias's prices) and the reservation is settled when its
call completes: the ledger bills what was really used and the reservation is
dropped. Admission counts what was spent *and* what is reserved, so 50 requests
arriving together cannot each see the same unspent budget; and a request whose
own estimate does not fit in what is left is refused before it goes out. What
the fleet can overshoot is then bounded by one request's estimate (an input
estimate below the real count), not by the number of requests in flight.

Task budgets count per (task, retry generation): ``coordinator retry`` raises the
generation in the task's token, and the new generation starts from zero
(``Ledger.spent``). Requests under the fleet token have no task budget but count
against the fleet's, as every request does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import BudgetError

if TYPE_CHECKING:
    from .accounting import Ledger, Price
    from .tokens import TokenClaims

# What an OpenAI request without max_tokens may generate, for its reservation.
DEFAULT_OUTPUT_ESTIMATE = 4096


def check_budget(*, fleet_spent: float, fleet_max: float, task_id: str | None,
                 task_spent: tuple[float, int] | None, max_usd: float | None, max_tokens: int | None,
                 estimate_usd: float = 0.0, estimate_tokens: int = 0) -> None:
    """Raise BudgetError when a request costing up to the estimate does not fit in what is left.

    ``*_spent`` include what other requests have reserved. A limit of 0 for the
    fleet means none.
    """
    if fleet_max > 0 and (fleet_spent >= fleet_max or fleet_spent + estimate_usd > fleet_max):
        raise BudgetError(f"the fleet has spent ${fleet_spent:.4f} of its ${fleet_max:g} budget"
                          f"{_needs(estimate_usd)}; raise [fleet] max_usd in fleet.toml to continue",
                          scope="fleet", limit=fleet_max)
    if task_id is None or task_spent is None:
        return
    usd, tokens = task_spent
    if max_usd is not None and (usd >= max_usd or usd + estimate_usd > max_usd):
        raise BudgetError(f"task {task_id!r} has spent ${usd:.4f} of its ${max_usd:g} budget{_needs(estimate_usd)}; "
                          f"raise max_usd in its task file (or lower max_tokens) to continue", scope="task",
                          limit=max_usd)
    if max_tokens is not None and (tokens >= max_tokens or tokens + estimate_tokens > max_tokens):
        more = f" and this request may use up to {estimate_tokens}" if estimate_tokens else ""
        raise BudgetError(f"task {task_id!r} has used {int(tokens)} of its {max_tokens} token budget{more}; "
                          f"raise max_tokens_budget in its task file (or lower max_tokens) to continue",
                          scope="task", limit=max_tokens)


def _needs(estimate_usd: float) -> str:
    return f" and this request may cost up to ${estimate_usd:.4f}" if estimate_usd else ""


@dataclass(frozen=True)
class Estimate:
    """What a request may cost at most: its input estimate plus its output limit."""

    usd: float
    tokens: int

    @classmethod
    def of(cls, input_tokens: int, max_output: object, price: Price) -> Estimate:
        """The estimate for ``input_tokens`` in and ``max_output`` (the request's max_tokens) out."""
        output = max_output if isinstance(max_output, int) and max_output > 0 else DEFAULT_OUTPUT_ESTIMATE
        return cls((input_tokens * price.input + output * price.output) / 1e6, input_tokens + output)


@dataclass
class Reservation:
    """A request's hold on its budgets until its call is settled; ``release`` is idempotent."""

    budgets: Budgets | None
    task: str | None
    estimate: Estimate
    released: bool = field(default=False)
    flight_owned: bool = field(default=False)  # handed to a flight, which releases it when its call ends

    def release(self) -> None:
        """Drop the hold (the ledger has billed what was really used, or nothing was)."""
        if not self.released and self.budgets is not None:
            self.released = True
            self.budgets.drop(self)


def no_reservation() -> Reservation:
    """A reservation holding nothing (requests that are never billed, such as count_tokens)."""
    return Reservation(None, None, Estimate(0.0, 0), released=True)


class Budgets:
    """Reservations against the ledger's spend, for the fleet and per task generation."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.reserved_usd = 0.0
        self._tasks: dict[str, list[float]] = {}  # task → [usd, tokens] reserved

    def applies(self, claims: TokenClaims) -> bool:
        """Whether any budget can refuse this token's requests (the fleet's, or its task's)."""
        return self.ledger.config.fleet.max_usd > 0 or claims.max_usd is not None or claims.max_tokens is not None

    def refusal(self, claims: TokenClaims, estimate: Estimate) -> BudgetError | None:
        """The BudgetError a reservation of ``estimate`` would raise now, or None when it fits."""
        try:
            self._check(claims, estimate)
        except BudgetError as exc:
            return exc
        return None

    def _check(self, claims: TokenClaims, estimate: Estimate) -> None:
        task = claims.task_id
        held = self._tasks.get(task, [0.0, 0]) if task else [0.0, 0]
        spent = None
        if task is not None:
            usd, tokens = self.ledger.spent(task, claims.generation)
            spent = (usd + held[0], int(tokens + held[1]))
        check_budget(fleet_spent=self.ledger.totals["usd"] + self.reserved_usd,
                     fleet_max=self.ledger.config.fleet.max_usd, task_id=task, task_spent=spent,
                     max_usd=claims.max_usd, max_tokens=claims.max_tokens, estimate_usd=estimate.usd,
                     estimate_tokens=estimate.tokens if claims.max_tokens is not None else 0)

    def reserve(self, claims: TokenClaims, estimate: Estimate) -> Reservation:
        """Hold ``estimate`` for the request; BudgetError when it does not fit in what is left."""
        task = claims.task_id
        self._check(claims, estimate)
        self.reserved_usd += estimate.usd
        if task is not None:
            entry = self._tasks.setdefault(task, [0.0, 0])
            entry[0] += estimate.usd
            entry[1] += estimate.tokens
        return Reservation(self, task, estimate)

    def drop(self, reservation: Reservation) -> None:
        """Forget a reservation (``Reservation.release`` calls this)."""
        self.reserved_usd = max(0.0, self.reserved_usd - reservation.estimate.usd)
        entry = self._tasks.get(reservation.task) if reservation.task else None
        if entry is not None:
            entry[0] -= reservation.estimate.usd
            entry[1] -= reservation.estimate.tokens
            if entry[1] <= 0:
                del self._tasks[reservation.task]
