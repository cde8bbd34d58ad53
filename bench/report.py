"""The comparison's results as a Markdown table and a PNG chart (see bench/compare.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVICES = ("envoy", "router", "inference", "ratelimit", "analytics")


def find(report: dict[str, Any], gateway: str, scenario: str, transport: str, concurrency: int = 1) -> dict[str, Any]:
    for r in report["results"]:
        if (
            r["gateway"] == gateway
            and r["scenario"] == scenario
            and r["transport"] == transport
            and r["mode"] == "closed"
            and r["concurrency"] == concurrency
        ):
            return dict(r)
    return {}


def _ms(r: dict[str, Any], key: str, p: str = "p50") -> str:
    return f"{r[key][p]:.1f} ms" if r and r.get(key) else "—"


def _ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "—"
    ratio = ours / theirs if higher_is_better else theirs / ours
    return f"{ratio:.1f}x"


def _cpu(r: dict[str, Any]) -> str:
    if not r or not r.get("cpu_ms"):
        return "—"
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu_ms"].items(), key=lambda kv: -kv[1]))
    return f"{r['cpu_total_ms']:.2f} ms ({parts})" if len(r["cpu_ms"]) > 1 else f"{r['cpu_total_ms']:.2f} ms"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Measured in one run on {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']};"
        f" LiteLLM's proxy {report['litellm'] or '(not installed)'}, one worker. 64-token answers.",
        "",
        "| per streamed chat | direct to simulator | tiermesh (gRPC via Envoy) | LiteLLM proxy | tiermesh vs LiteLLM |",
        "| --- | --- | --- | --- | --- |",
    ]

    def row(label: str, direct: str, ours: str, theirs: str, ratio: str = "—") -> None:
        lines.append(f"| {label} | {direct} | {ours} | {theirs} | {ratio} |")

    for pace, title in (("unpaced", "unpaced"), ("paced", "paced 20 ms/token")):
        d = find(report, "direct", pace, "openai-sse")
        for conc in (1, 16, 64):
            t = find(report, "tiermesh", pace, "grpc", conc)
            lt = find(report, "litellm", pace, "openai-sse", conc)
            if not t:
                continue
            if conc == 1:
                row(
                    f"{title}, c=1: first token p50 / whole stream p50",
                    f"{_ms(d, 'first_token_ms')} / {_ms(d, 'whole_ms')}",
                    f"{_ms(t, 'first_token_ms')} / {_ms(t, 'whole_ms')}",
                    f"{_ms(lt, 'first_token_ms')} / {_ms(lt, 'whole_ms')}" if lt else "—",
                    _ratio(t["whole_ms"]["p50"], lt.get("whole_ms", {}).get("p50"), False),
                )
                if d:
                    added = t["first_token_ms"]["p50"] - d["first_token_ms"]["p50"]
                    theirs = (lt["first_token_ms"]["p50"] - d["first_token_ms"]["p50"]) if lt else None
                    row(
                        f"{title}, c=1: first token added over direct, p50",
                        "—",
                        f"{added:.1f} ms",
                        f"{theirs:.1f} ms" if theirs is not None else "—",
                        _ratio(added, theirs, False) if added > 0 else "—",
                    )
            else:
                row(
                    f"{title}, c={conc}: first token p50 / p99",
                    "—",
                    f"{_ms(t, 'first_token_ms')} / {_ms(t, 'first_token_ms', 'p99')}",
                    f"{_ms(lt, 'first_token_ms')} / {_ms(lt, 'first_token_ms', 'p99')}" if lt else "—",
                    _ratio(t["first_token_ms"]["p50"], lt.get("first_token_ms", {}).get("p50"), False),
                )
            row(
                f"{title}, c={conc}: throughput",
                f"{d['throughput']:.0f}/s" if d and conc == 1 else "—",
                f"{t['throughput']:.1f}/s",
                f"{lt['throughput']:.1f}/s" if lt else "—",
                _ratio(t["throughput"], lt.get("throughput"), True),
            )
            row(
                f"{title}, c={conc}: CPU per chat",
                "—",
                _cpu(t),
                _cpu(lt),
                _ratio(t["cpu_total_ms"], lt.get("cpu_total_ms"), False),
            )
        for transport, conc in (("grpc-web-h1", 1), ("grpc-web-h2", 16)):
            w = find(report, "tiermesh", pace, transport, conc)
            if w:
                row(
                    f"{title}, gRPC-Web over HTTP/{transport[-1]}, c={conc}: first token p50 / whole p50, CPU",
                    "—",
                    f"{_ms(w, 'first_token_ms')} / {_ms(w, 'whole_ms')}, {w['cpu_total_ms']:.2f} ms",
                    "—",
                )
    hit = find(report, "tiermesh", "cache-hit", "grpc")
    if hit:
        row("cache hit, c=1: first token p50, CPU per chat", "—", f"{_ms(hit, 'first_token_ms')}, {_cpu(hit)}", "—")
    rates = report.get("highest_rate") or {}
    ours, theirs = rates.get("tiermesh") or {}, rates.get("litellm") or {}

    def sustained(r: dict[str, Any]) -> str:
        if not r:
            return "—"
        if r.get("rate"):
            return f"{r['rate']:g}/s"
        return (
            f"under {r['lowest_tried']:g}/s (p99 added {r['added_p99_ms_at_lowest']:.0f} ms at {r['lowest_tried']:g}/s)"
        )

    row(
        "highest rate sustained with p99 added latency < 50 ms (open loop, unpaced)",
        "—",
        sustained(ours),
        sustained(theirs),
        _ratio(ours.get("rate"), theirs.get("rate"), True),
    )
    rd = report.get("router_decision") or {}
    if rd:
        row("Router decision in-process, p50 / p99", "—", f"{rd['p50_us']:.0f} / {rd['p99_us']:.0f} µs", "—")
    verdicts = report.get("ratelimit") or {}
    checked = sum(v.get("ok", 0) + v.get("over_limit", 0) for v in verdicts.values())
    failed_open = sum(v.get("error", 0) + v.get("failure_mode_allowed", 0) for v in verdicts.values())
    lines += [
        "",
        f"Rate limits: {checked} verdicts from the RateLimit service during the run, {failed_open} failed open.",
        "",
    ]
    return "\n".join(lines)


def chart(report: dict[str, Any], path: Path) -> None:
    """Two panels: whole-stream latency (p50, p99) against offered rate, open loop, unpaced; and
    CPU per chat per process in the closed-loop scenarios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), dpi=110)
    colours = {"tiermesh": "#1f77b4", "litellm": "#d62728"}
    for gateway in ("tiermesh", "litellm"):
        points = sorted(
            (r["offered_rate"], r["whole_ms"]["p50"], r["whole_ms"]["p99"])
            for r in report["results"]
            if r["gateway"] == gateway and r["mode"] == "open" and r["whole_ms"]
        )
        if not points:
            continue
        rates, p50, p99 = zip(*points, strict=True)
        left.plot(rates, p50, "o-", color=colours[gateway], label=f"{gateway} p50")
        left.plot(rates, p99, "s--", color=colours[gateway], label=f"{gateway} p99")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("offered load (chats/s, open loop)")
    left.set_ylabel("whole stream latency (ms)")
    left.set_title("Latency against load, unpaced 64-token answers")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    bars: list[tuple[str, dict[str, float]]] = []
    for pace in ("unpaced", "paced"):
        for conc in (1, 64) if pace == "unpaced" else (16,):
            for gateway, transport in (("tiermesh", "grpc"), ("litellm", "openai-sse")):
                r = find(report, gateway, pace, transport, conc)
                if r.get("cpu_ms"):
                    bars.append((f"{gateway}\n{pace} c={conc}", r["cpu_ms"]))
    names = [*SERVICES, "litellm"]
    bottom = [0.0] * len(bars)
    for name in names:
        heights = [cpu.get(name, 0.0) for _, cpu in bars]
        if any(heights):
            right.bar([label for label, _ in bars], heights, bottom=bottom, label=name)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    right.set_ylabel("CPU per chat (ms)")
    right.set_title("CPU per streamed chat, every process of the gateway")
    right.tick_params(axis="x", labelsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
