"""The budget side of the user value check: may this user spend more, and what if not.

Router asks a BudgetCheck before choosing a model. The default allows everything; Analytics
fills it with real spend against the configured monthly budgets. The policy's answer is one of
`allow`, `downgrade` (one tier lower, never below 1) or `refuse` (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from services.runtime.errors import ResourceExhausted

Action = Literal["allow", "downgrade", "refuse"]


@dataclass(frozen=True)
class BudgetStatus:
    action: Action
    reason: str = ""


ALLOW = BudgetStatus("allow")


class BudgetCheck(Protocol):
    async def status(self, user: str, segment: str) -> BudgetStatus: ...


class NoBudgets:
    """Every user may spend: no budgets are configured."""

    async def status(self, user: str, segment: str) -> BudgetStatus:
        return ALLOW


def apply(tier: int, status: BudgetStatus, reasons: list[str]) -> int:
    """The tier after the budget verdict; adds the verdict to `reasons` or raises when refused."""
    if status.action == "refuse":
        raise ResourceExhausted(status.reason or "your budget for this period is spent; try again next period")
    if status.action == "downgrade" and tier > 1:
        reasons.insert(0, f"downgraded from tier {tier} to {tier - 1}: {status.reason}")
        return tier - 1
    return tier
