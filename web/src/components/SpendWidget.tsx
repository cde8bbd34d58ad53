"use client";
// Live spend of the signed-in user this month, from AnalyticsService.WatchSpend (a server
// stream through the edge). Reconnects with backoff; gives up on auth errors and says why.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { useEffect, useState } from "react";

import { WatchSpendRequestSchema } from "@/gen/tiermesh/analytics/v1/analytics_service_pb";
import { describeError } from "@/lib/errors";
import { integer, usd } from "@/lib/format";
import { callOptions, clients } from "@/lib/transport";

interface Spend {
  costMicroUsd: number;
  requests: number;
}

const MIN_BACKOFF_MS = 1_000;
const MAX_BACKOFF_MS = 30_000;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export function SpendWidget({ edgeUrl, token, user }: { edgeUrl: string; token: string; user: string }) {
  const [spend, setSpend] = useState<Spend | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [reconnecting, setReconnecting] = useState(false);

  useEffect(() => {
    const controller = new AbortController();
    const { signal } = controller;
    async function watch() {
      let failures = 0;
      while (!signal.aborted) {
        try {
          const stream = clients(edgeUrl).analytics.watchSpend(create(WatchSpendRequestSchema, { user }), callOptions(token, signal));
          for await (const update of stream) {
            failures = 0;
            setSpend({ costMicroUsd: Number(update.totals?.costMicroUsd ?? 0n), requests: Number(update.totals?.requests ?? 0n) });
            setProblem(null);
            setReconnecting(false);
          }
        } catch (err) {
          if (signal.aborted) return;
          const code = ConnectError.from(err).code;
          if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
            setProblem(describeError(err).message);
            setReconnecting(false);
            return;
          }
        }
        if (signal.aborted) return;
        // The stream ended or failed: try again, waiting longer each time (with jitter).
        failures += 1;
        setReconnecting(true);
        const backoff = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * 2 ** (failures - 1));
        await sleep(backoff / 2 + Math.random() * (backoff / 2), signal);
      }
    }
    void watch();
    return () => controller.abort();
  }, [edgeUrl, token, user]);

  let text: string;
  let title: string;
  if (problem) {
    text = `Spend unavailable: ${problem}`;
    title = problem;
  } else if (spend) {
    text = `This month: ${usd(spend.costMicroUsd)} · ${integer(spend.requests)} ${spend.requests === 1 ? "request" : "requests"}`;
    title = reconnecting ? "Live spend this month (reconnecting…)" : "Live spend this month";
  } else {
    text = "This month: …";
    title = reconnecting ? "Connecting to live spend (retrying)…" : "Connecting to live spend…";
  }
  return (
    <p
      className={`spend${problem ? " spend-problem" : ""}`}
      data-testid="spend"
      data-cost-micro-usd={spend?.costMicroUsd ?? ""}
      data-requests={spend?.requests ?? ""}
      data-state={problem ? "stopped" : reconnecting ? "reconnecting" : spend ? "live" : "connecting"}
      title={title}
    >
      {text}
    </p>
  );
}
