"""The runtime every tiermesh service shares: config, logging, errors, validation, server lifecycle."""
