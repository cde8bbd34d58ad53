"""Shared test settings: LiteLLM never fetches its cost map; tests see the repo's config."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
