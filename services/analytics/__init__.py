"""Analytics service: every request's tokens and cost in PostgreSQL, spend reports, live totals, budgets."""
