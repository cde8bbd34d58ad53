"""The budget side of the user value check: may this user spend more, and what if not.

Router asks a BudgetCheck before choosing a model. With no budgets configured everything is
allowed; otherwise SpendBudgets compares Analytics' spend with the monthly budgets. The policy's answer is one of
`allow`, `downgrade` (one tier lower, never below 1) or `refuse` (RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import grpc
from tiermesh.analytics.v1 import analytics_service_pb2 as apb
from tiermesh.common.v1 import common_pb2 as c

from services.runtime import config
from services.runtime.config import ConfigError
from services.runtime.enums import value_of
from services.runtime.errors import ResourceExhausted
from services.runtime.identity import SEGMENTS, TEAM_NAME
from services.runtime.money import usd

log = logging.getLogger("tiermesh.router")


Action = Literal["allow", "downgrade", "refuse"]
BUDGET_ACTIONS = ("downgrade", "refuse")


@dataclass(frozen=True)
class Budgets:
    """Monthly budgets (calendar month, UTC) in micro-dollars, from `analytics.budgets`. A user's
    own budget overrides the per-user budget of their segment; a team's total (its own, or
    `per_team` for a team not named) caps what all the API keys of that team spend together; a
    segment's total caps all its users together."""

    action: str = "downgrade"
    users: Mapping[str, int] = field(default_factory=dict)
    per_user_by_segment: Mapping[str, int] = field(default_factory=dict)
    segments: Mapping[str, int] = field(default_factory=dict)
    teams: Mapping[str, int] = field(default_factory=dict)
    per_team: int | None = None  # a team not named in `teams`
    cache_s: float = 5.0

    @property
    def any(self) -> bool:
        return bool(self.users or self.per_user_by_segment or self.segments or self.teams or self.per_team is not None)


def _amounts(
    node: Any, where: str, keys: tuple[str, ...] | None = None, name: re.Pattern[str] | None = None
) -> dict[str, int]:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: must be a mapping of name to USD per month")
    out = {}
    for key, value in node.items():
        if keys is not None and key not in keys:
            raise ConfigError(f"{where}: unknown segment {key!r}; segments are {', '.join(keys)}")
        if name is not None and not (isinstance(key, str) and key and name.fullmatch(key)):
            raise ConfigError(f"{where}: {key!r} is not a team name (at most 128 letters, digits, '.', '_' or '-')")
        out[str(key)] = config.usd_to_micro(value, f"{where}.{key}")
    return out


def load_budgets(tree: Mapping[str, Any]) -> Budgets:
    node = config.section(tree, "analytics", "budgets")
    where = "analytics.budgets"
    action = config.get_str(node, "action", "downgrade", where=where)
    if action not in BUDGET_ACTIONS:
        raise ConfigError(f"{where}.action: must be one of {', '.join(BUDGET_ACTIONS)}, got {action!r}")
    return Budgets(
        action=action,
        users=_amounts(node.get("users"), f"{where}.users"),
        per_user_by_segment=_amounts(node.get("per_user_by_segment"), f"{where}.per_user_by_segment", SEGMENTS),
        segments=_amounts(node.get("segments"), f"{where}.segments", SEGMENTS),
        teams=_amounts(node.get("teams"), f"{where}.teams", name=TEAM_NAME),
        per_team=None if node.get("per_team") is None else config.usd_to_micro(node["per_team"], f"{where}.per_team"),
        cache_s=config.get_float(node, "cache_s", 5.0, where=where, lo=0, hi=3600),
    )


@dataclass(frozen=True)
class BudgetStatus:
    action: Action
    reason: str = ""


ALLOW = BudgetStatus("allow")


class BudgetCheck(Protocol):
    async def status(self, user: str, segment: str, own_limit: int | None = None, team: str = "") -> BudgetStatus: ...


class NoBudgets:
    """Every user may spend: no budgets are configured."""

    async def status(self, user: str, segment: str, own_limit: int | None = None, team: str = "") -> BudgetStatus:
        return ALLOW


def apply(tier: int, status: BudgetStatus, reasons: list[str]) -> int:
    """The tier after the budget verdict; adds the verdict to `reasons` or raises when refused."""
    if status.action == "refuse":
        raise ResourceExhausted(status.reason or "your budget for this period is spent; try again next period")
    if status.action == "downgrade" and tier > 1:
        reasons.insert(0, f"downgraded from tier {tier} to {tier - 1}: {status.reason}")
        return tier - 1
    return tier


SpendCall = Callable[..., Awaitable[apb.GetSpendResponse]]


def _spent_reason(kind: str, name: str, spent: int, limit: int) -> str:
    """What a decision says when the `kind` (user, team, segment) budget `name` is spent."""
    if kind == "user":
        return f"monthly budget spent: {usd(spent)} of {usd(limit)} this month"
    return f"the {name} {kind}'s monthly budget is spent: {usd(spent)} of {usd(limit)}"


class SpendBudgets:
    """Monthly budgets checked against Analytics' spend for the calendar month (UTC).

    Spend is cached for `budgets.cache_s` per user, team and segment, so a chat costs at most one
    GetSpend per cache period. When Analytics cannot answer in time the check allows (a budget is
    never a reason to fail a chat on a dependency's outage) and says so in the log."""

    def __init__(self, budgets: Budgets, get_spend: SpendCall, deadline_s: float = 0.25) -> None:
        self.budgets = budgets
        self.get_spend = get_spend
        self.deadline_s = deadline_s
        self._cache: dict[tuple[str, str, str], tuple[float, int | None]] = {}

    async def _month_spend(self, user: str = "", segment: str = "", team: str = "") -> int | None:
        key = (user, segment, team)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        request = apb.GetSpendRequest(
            user=user, segment=c.Segment.ValueType(value_of(c.Segment, "SEGMENT_", segment)), team=team
        )
        request.start_time.FromDatetime(start)
        spent: int | None
        try:
            reply = await self.get_spend(request, timeout=self.deadline_s)
            spent = int(reply.totals.cost_micro_usd)
        except grpc.aio.AioRpcError as exc:
            log.warning("spend unknown: budgets not enforced for now", extra={"code": exc.code().name})
            spent = None
        if len(self._cache) >= 10_000:  # one entry per active user: forget the expired ones
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.budgets.cache_s, spent)
        return spent

    async def status(self, user: str, segment: str, own_limit: int | None = None, team: str = "") -> BudgetStatus:
        """The verdict for this user; `own_limit` (an API key's budget for its user) comes before
        the configured ones, then the budget of the key's `team`, then the segment's. Without any
        budget that applies, no spend is looked up."""
        b = self.budgets
        user_limit = (own_limit or b.users.get(user, b.per_user_by_segment.get(segment))) if user else None
        team_limit = b.teams.get(team, b.per_team) if team else None
        for limit, kind, name in (
            (user_limit, "user", user),
            (team_limit, "team", team),
            (b.segments.get(segment), "segment", segment),
        ):
            if limit is None:
                continue
            spent = await self._month_spend(**{kind: name})
            if spent is not None and spent >= limit:
                return BudgetStatus(b.action, _spent_reason(kind, name, spent, limit))  # type: ignore[arg-type]
        return ALLOW
