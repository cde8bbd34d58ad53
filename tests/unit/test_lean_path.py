"""The lean path needs no LiteLLM: its token counts are LiteLLM's without importing it, LiteLLM is
loaded only when a deployment takes its path, and the shipped self-hosted Llama deployment is lean."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.inference import tokens

TEXTS = [
    "",
    "a",
    "quantos tokens tem esta pergunta?",
    "emoji 💸🚚, CJK 配送, RTL مرحبا, combining e\u0301",
    "<|endoftext|> special tokens are counted as text",
    # Longer than one 1,024-character chunk, with words cut at the chunk boundaries.
    "Reembolso do cartão de crédito em até duas faturas. " * 90,
    "x" * 5000,
]
CONVERSATIONS = [
    [],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Answer in Portuguese."},
        {"role": "user", "content": "Como pago com Pix?", "name": "maria"},
        {"role": "assistant", "content": "Escaneie o QR code. " * 80},
        {"role": "user", "content": ""},
    ],
]


CHAT_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4", "gpt-3.5-turbo", "gpt-4.1-mini", "o3-mini", "llama3"]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_counts_match_litellm(model: str) -> None:
    import litellm

    for text in TEXTS:
        assert tokens.count_text(model, text) == litellm.token_counter(model=model, text=text), (model, text[:40])
    for messages in CONVERSATIONS:
        assert tokens.count_messages(model, messages) == litellm.token_counter(model=model, messages=messages)


def test_counting_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "from services.inference import tokens\n"
        "n = tokens.count_messages('gpt-4o', [{'role': 'user', 'content': 'olá'}])\n"
        "print(n, 'litellm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    count, imported = out.stdout.split()
    assert int(count) > 3
    assert imported == "False"


@pytest.mark.parametrize(
    ("tier1", "loads_litellm"),
    [
        ("", False),  # the shipped configuration: the simulator and OpenAI-compatible servers only
        (
            "[{name: claude, provider: anthropic, model: claude-3-5-haiku-latest, api_key_env: TEST_ANTHROPIC_KEY,"
            " input_usd_per_mtok: 0.8, output_usd_per_mtok: 4, context_window: 200000}]",
            True,
        ),
    ],
)
def test_inference_loads_litellm_only_when_a_deployment_needs_it(tier1: str, loads_litellm: bool) -> None:
    code = (
        "import asyncio, sys\n"
        "from services.inference import config as ic\n"
        "from services.inference.server import build_provider\n"
        "from services.runtime import config\n"
        "async def main():\n"
        "    provider = build_provider(ic.load(config.load()))\n"
        "    await provider.warm_up()\n"
        "    await provider.aclose()\n"
        "asyncio.run(main())\n"
        "print('litellm' in sys.modules)\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    if tier1:
        env["TIERMESH_INFERENCE__TIERS__1"] = tier1
        env["TEST_ANTHROPIC_KEY"] = "never-sent"  # warm-up calls no provider
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == str(loads_litellm)


async def test_the_shipped_self_hosted_llama_deployment_turns_on_with_its_key() -> None:
    """config/tiermesh.yaml ships a commented Llama deployment: uncommented, it answers tier 1
    (on the lean path, no LiteLLM) once LLAMA_API_KEY is set, and is inert without it."""
    import yaml

    from services.inference import config as ic
    from services.inference.server import build_provider
    from services.runtime import config

    text = (config.REPO_ROOT / "config" / "tiermesh.yaml").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("# - {name: llama-local"))
    for i in (start, start + 1):
        lines[i] = lines[i].replace("# ", "", 1)  # as a user uncomments it
    tree = yaml.safe_load("\n".join(lines))
    off = ic.load(tree, environ={})
    assert [d.name for d in off.tiers[1]] == ["sim-fast"]
    on = ic.load(tree, environ={"LLAMA_API_KEY": "ollama"})
    (llama,) = on.tiers[1]
    assert (llama.name, llama.provider, llama.model) == ("llama-local", "openai_compatible", "llama3.2")
    assert llama.api_base == "http://127.0.0.1:11434/v1" and llama.cost_micro_usd(1000, 1000) == 0
    provider = build_provider(on)
    assert not provider.wants_litellm
    await provider.aclose()
