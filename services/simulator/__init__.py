"""An OpenAI-compatible provider simulator: the default provider when no API key is set."""
