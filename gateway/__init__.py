"""The edge: Envoy configuration and the tools around it."""

import services  # noqa: F401  (gRPC's transport settings, before anything here loads grpc)
