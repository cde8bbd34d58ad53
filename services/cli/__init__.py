"""The `tiermesh` command line."""
