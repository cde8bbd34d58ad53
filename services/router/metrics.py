"""Router's metrics: where messages are sent and why, what grounding found, what budgets said."""

from __future__ import annotations

from opentelemetry import trace

from services.router.policy import Decision
from services.runtime import metrics

ROUTE_DECISIONS = metrics.counter(
    "tiermesh_route_decisions_total",
    "Route decisions (Chat and Route) by final tier, intent and segment.",
    ["tier", "intent", "segment"],
)
SECOND_OPINIONS = metrics.counter(
    "tiermesh_route_second_opinions_total",
    "Route decisions where the fast models were unsure and the embedding classifier was heard too.",
    [],
)
SECOND_OPINIONS_SKIPPED = metrics.counter(
    "tiermesh_route_second_opinions_skipped_total",
    "Route decisions that wanted the second opinion but were made on the fast models alone, because "
    "router.second_opinion.max_waiting were already waiting.",
    [],
)
KNOWLEDGE_SEARCHES = metrics.counter(
    "tiermesh_knowledge_searches_total",
    "Knowledge searches to ground a chat, by outcome: grounded, no_match, unavailable (failed or too slow), "
    "skipped (paused after failures in a row).",
    ["outcome"],
)
BUDGET_VERDICTS = metrics.counter(
    "tiermesh_budget_verdicts_total",
    "Budget checks before routing, by action: allow, downgrade or refuse.",
    ["action"],
)


def decided(decision: Decision) -> None:
    """Count a final decision and put it on the RPC's span."""
    ROUTE_DECISIONS.labels(str(decision.tier), decision.intent, decision.segment).inc()
    if decision.second_opinion:
        SECOND_OPINIONS.inc()
    trace.get_current_span().set_attributes(
        {
            "tiermesh.tier": decision.tier,
            "tiermesh.intent": decision.intent,
            "tiermesh.complexity": decision.complexity,
            "tiermesh.segment": decision.segment,
            "tiermesh.policy_version": decision.policy_version,
            "tiermesh.second_opinion": decision.second_opinion,
        }
    )


def second_opinion_skipped() -> None:
    SECOND_OPINIONS_SKIPPED.inc()


def budget_verdict(action: str) -> None:
    BUDGET_VERDICTS.labels(action).inc()
