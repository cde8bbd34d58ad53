"""`tiermesh up`, `chat` and `health` as a user runs them, with no network but loopback."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from services.cli.supervisor import web_built
from tests.integration.mesh import mesh_env

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TIERMESH = str(BIN / "tiermesh")
HELPCENTER = Path(__file__).resolve().parents[2] / "data" / "knowledge" / "helpcenter"


def _isolation_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


ISOLATED = _isolation_works()


def _read_until(proc: subprocess.Popen[str], pattern: str, timeout_s: float) -> tuple[re.Match[str], list[str]]:
    """Read the process's output lines (in a thread: readline may block) until one matches."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)
            if re.search(pattern, line):
                return  # leave the rest for communicate()

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line.rstrip("\n"))
        match = re.search(pattern, line)
        if match:
            return match, seen
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s; output:\n" + "\n".join(seen[-40:]))


def test_up_then_chat_and_health_from_another_shell(tmp_path: Path) -> None:
    database = f"tiermesh_cli_{uuid.uuid4().hex[:8]}"
    try:
        _up_then_chat_and_health(tmp_path, database)
    finally:
        subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", database], check=False)


def _up_then_chat_and_health(tmp_path: Path, database: str) -> None:
    env = {
        **os.environ,
        **mesh_env(
            tmp_path,
            TIERMESH_SIMULATOR__TOKEN_DELAY_MS="5",
            TIERMESH_ANALYTICS__DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        ),
    }
    # In a network namespace with only loopback (when the machine allows it): a start-up that
    # reached out to the internet (LiteLLM's cost map, a model hub ...) would fail or stall here.
    # `make run` starts the mesh this way: the sample help centre ingested once everything is healthy.
    up_args = f"up --ingest {HELPCENTER}"
    up_cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {TIERMESH} {up_args}"]
    if not ISOLATED:
        up_cmd = [TIERMESH, *up_args.split()]
    proc = subprocess.Popen(up_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        match, _ = _read_until(proc, r"tiermesh is up \(healthy in ([0-9.]+) s\)", 60)
        print(f"tiermesh up healthy in {match.group(1)} s (isolated network: {ISOLATED})")
        _, ingest_lines = _read_until(proc, r"^Try: ", 120)
        assert any("24/24 documents" in line for line in ingest_lines), ingest_lines
        # The status table's row (indented), not a line of the part's own log echoed beside it
        # ("analytics | ..."), which can land in the same window.
        analytics_line = next(line for line in ingest_lines if line.startswith("  analytics "))
        assert ("NOT_SERVING: its database is unreachable" in analytics_line) == ISOLATED, analytics_line
        if web_built():
            port = env["TIERMESH_SERVICES__WEB__PORT"]
            assert f"Chat in a browser: http://127.0.0.1:{port}" in ingest_lines, ingest_lines
        enter = ["nsenter", f"--net=/proc/{proc.pid}/ns/net"] if ISOLATED else []

        chat = subprocess.run([*enter, TIERMESH, "chat", "hello"], env=env, capture_output=True, text=True, timeout=60)
        assert chat.returncode == 0, chat.stderr
        lines = chat.stdout.splitlines()
        assert lines[0].startswith("→ tier 1 · fast"), chat.stdout
        assert any(line.startswith("  why: ") for line in lines)
        assert "[simulated answer from sim-fast]" in chat.stdout
        assert re.search(r"— sim-fast \(sim-fast\) · \d+ in / \d+ out tokens · \$0\.\d{6}", chat.stdout), chat.stdout

        grounded = subprocess.run(
            [*enter, TIERMESH, "chat", "como faço para pagar com pix?"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert grounded.returncode == 0, grounded.stderr
        assert re.search(
            r"^\[1\] Pagamento com Pix \(pagamento-com-pix\.pt, relevance 0\.\d\d\)$", grounded.stdout, re.M
        ), grounded.stdout

        found = subprocess.run(
            [*enter, TIERMESH, "search", "boleto vencido", "--top-k", "2", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert found.returncode == 0, found.stderr
        rows = json.loads(found.stdout)
        assert len(rows) == 2 and rows[0]["document_id"] == "boleto-bancario.pt"
        assert set(rows[0]) >= {"document_id", "chunk_id", "title", "score", "text", "start", "end"}

        # What a chat is given: at most one passage of each article, so the next articles get in.
        capped = subprocess.run(
            [*enter, TIERMESH, "search", "frete para lisboa", "--top-k", "4", "--per-document", "1", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert capped.returncode == 0, capped.stderr
        docs = [row["document_id"] for row in json.loads(capped.stdout)]
        assert len(docs) == 4 and len(set(docs)) == 4, docs

        # `tiermesh search ... | head`: the reader goes away before the results are written.
        piped = subprocess.Popen(
            [*enter, TIERMESH, "search", "pix", "--top-k", "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert piped.stdout is not None and piped.stderr is not None
        piped.stdout.close()
        with piped.stderr:
            err = piped.stderr.read()
        assert piped.wait(timeout=30) == 141, err  # 128 + SIGPIPE, as `yes | head` ends
        assert "Traceback" not in err and "BrokenPipe" not in err, err

        listing = subprocess.run([*enter, TIERMESH, "models"], env=env, capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stdout
        lines = listing.stdout.splitlines()
        assert lines[0].split()[:3] == ["tier", "deployment", "model"]
        assert [line.split()[:2] for line in lines[1:]] == [
            ["1", "sim-fast"],
            ["2", "sim-balanced"],
            ["3", "sim-advanced"],
            ["4", "sim-premium"],
        ]
        assert all(line.split()[-2:] == ["ok", "closed"] for line in lines[1:])

        health = subprocess.run([*enter, TIERMESH, "health"], env=env, capture_output=True, text=True, timeout=30)
        statuses = dict(line.split()[:2] for line in health.stdout.splitlines()[:9] if line.strip())
        expected = {
            "simulator": "SERVING",
            "inference": "SERVING",
            "knowledge": "SERVING",
            "analytics": "SERVING",
            "router": "SERVING",
            "ratelimit": "SERVING",
            "openai": "SERVING",
            "envoy": "SERVING",
            # `make test` builds the web app first, so `tiermesh up` serves it too
            "web": "SERVING" if web_built() else "NOT_BUILT",
        }
        if ISOLATED:
            # PostgreSQL listens outside this namespace: Analytics runs, says why it cannot
            # serve, and chats (above) work regardless.
            expected["analytics"] = "NOT_SERVING"
            assert health.returncode == 1
            assert "cannot reach PostgreSQL" in health.stdout, health.stdout
        else:
            assert health.returncode == 0, health.stdout + health.stderr
        assert statuses == expected, health.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, rest
    assert "stopping" in rest
    for name in ("simulator", "inference", "knowledge", "analytics", "router", "ratelimit"):
        assert re.search(rf"^{name}\s*\| .*stopped", rest, re.M), f"{name} did not stop cleanly:\n{rest}"


def test_health_says_what_to_start_when_nothing_runs(tmp_path: Path) -> None:
    env = {**os.environ, **mesh_env(tmp_path)}
    health = subprocess.run([TIERMESH, "health"], env=env, capture_output=True, text=True, timeout=30)
    assert health.returncode == 1
    assert "router     UNREACHABLE" in health.stdout
    assert "make run" in health.stdout


def test_chat_without_a_mesh_fails_with_a_hint(tmp_path: Path) -> None:
    env = {**os.environ, **mesh_env(tmp_path)}
    chat = subprocess.run([TIERMESH, "chat", "hi"], env=env, capture_output=True, text=True, timeout=30)
    assert chat.returncode == 1
    assert "UNAVAILABLE" in chat.stderr and "make run" in chat.stderr


def test_cli_commands_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from services.cli import main, chat, health, probes, knowledge, spend, route; "
        "heavy = [m for m in ('litellm', 'torch', 'sentence_transformers', 'qdrant_client', 'openai', 'aiohttp') "
        "if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
