"""tiermesh services: Router, Inference, Knowledge, Analytics, the provider simulator and the CLI."""
