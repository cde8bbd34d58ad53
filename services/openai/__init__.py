"""OpenAI-compatible API: OpenAI's chat completions wire format over the Router's Chat."""
