"""The global RateLimit service Envoy's ratelimit filter calls (Envoy's rls.v3 API, Redis counters)."""
