"""Analytics' metrics: the write buffer and what reached the database."""

from __future__ import annotations

from services.runtime import metrics

BUFFER_DEPTH = metrics.gauge("tiermesh_analytics_buffer_events", "Usage events accepted and waiting for the database.")
BUFFER_CAPACITY = metrics.gauge("tiermesh_analytics_buffer_capacity_events", "Size of the usage write buffer.")
ACCEPTED = metrics.counter("tiermesh_analytics_events_accepted_total", "Usage events accepted into the buffer.")
REFUSED = metrics.counter(
    "tiermesh_analytics_events_refused_total", "Usage events refused with RESOURCE_EXHAUSTED (buffer full)."
)
WRITTEN = metrics.counter(
    "tiermesh_analytics_events_written_total", "Usage events newly stored (duplicates of stored requests excluded)."
)
DATABASE_ERRORS = metrics.counter(
    "tiermesh_analytics_database_errors_total",
    "Batch writes that failed for the database's reasons (unreachable, or refusing writes); retried with backoff.",
)
DEAD_LETTERED = metrics.counter(
    "tiermesh_analytics_events_dead_lettered_total",
    "Usage events the database refused for their data (or unreadable spill lines), set aside in the dead-letter file.",
)
WRITER_STALLED = metrics.gauge(
    "tiermesh_analytics_writer_stalled",
    "1 while events wait and none has reached the database for analytics.stall_after_s; else 0.",
)
