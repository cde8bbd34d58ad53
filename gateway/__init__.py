"""The edge: Envoy configuration and the tools around it."""
