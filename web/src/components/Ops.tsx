"use client";
// Operations: spend over time by tier, model and segment (AnalyticsService.GetSpend), and the
// deployments with their health (InferenceService.ListModels). Operator tokens only.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { useEffect, useState, type ReactNode } from "react";

import { ModelsTable } from "@/components/ModelsTable";
import { SignInPrompt, WithSignIn } from "@/components/SignInPrompt";
import { SpendChart, seriesId, type ChartRow, type ChartSeries } from "@/components/SpendChart";
import {
  GetSpendRequestSchema,
  SpendDimension,
  type GetSpendResponse,
} from "@/gen/tiermesh/analytics/v1/analytics_service_pb";
import { ListModelsRequestSchema, type ModelInfo } from "@/gen/tiermesh/inference/v1/inference_service_pb";
import { useConfig } from "@/lib/config";
import { describeError, type FriendlyError } from "@/lib/errors";
import { clock, integer, usd } from "@/lib/format";
import type { Session } from "@/lib/session";
import { READ_TIMEOUT_MS, callOptions, clients } from "@/lib/transport";
import { useSession } from "@/lib/useSession";

const SPEND_REFRESH_MS = 10_000;
const MODELS_REFRESH_MS = 3_000;

const RANGES = {
  hour: { label: "Last hour", bucketS: 60, buckets: 60, unit: "minute" },
  day: { label: "Last 24 hours", bucketS: 3600, buckets: 24, unit: "hour" },
  week: { label: "Last 7 days", bucketS: 86400, buckets: 7, unit: "UTC day" },
} as const;
type RangeId = keyof typeof RANGES;

const DIMENSIONS = [
  { dimension: SpendDimension.TIER, testId: "chart-tier", name: "tier" },
  { dimension: SpendDimension.MODEL, testId: "chart-model", name: "model" },
  { dimension: SpendDimension.SEGMENT, testId: "chart-segment", name: "segment" },
  { dimension: SpendDimension.TEAM, testId: "chart-team", name: "team" },
] as const;

export function Ops() {
  const session = useSession();
  const config = useConfig();
  let body: ReactNode;
  if (session === undefined || config.status === "loading") {
    body = <p className="muted">Loading…</p>;
  } else if (session === null) {
    body = <SignInPrompt what="see operations" />;
  } else if (!session.operator) {
    body = (
      <p className="refused" role="alert" data-testid="ops-refused">
        Operations is for operators. Your token has no operator role; ask an administrator, or sign in with an operator account.
      </p>
    );
  } else if (config.status === "error") {
    body = (
      <p className="error" role="alert">
        {config.message}
      </p>
    );
  } else {
    body = <Dashboard session={session} edgeUrl={config.config.edgeUrl} />;
  }
  return (
    <section className="ops" aria-labelledby="ops-title">
      <h1 id="ops-title">Operations</h1>
      {body}
    </section>
  );
}

/** Labels for a dimension's keys: tiers are numbers on the wire. */
function keyLabel(name: string, key: string): string {
  if (!key) return name === "team" ? "(no team)" : "(none)";
  return name === "tier" && /^\d+$/.test(key) ? `Tier ${key}` : key;
}

function bucketLabel(ms: number, range: RangeId): string {
  const d = new Date(ms);
  // Day buckets are whole UTC days: name them in UTC, or they would carry the previous day's name.
  if (range === "week") return d.toLocaleDateString("en-GB", { weekday: "short", day: "numeric", timeZone: "UTC" });
  return d.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit" });
}

/** Shows a failed read; PERMISSION_DENIED also goes to the refusal banner. */
function report(err: unknown, setError: (e: FriendlyError) => void, setDenied: (message: string) => void): void {
  const code = ConnectError.from(err).code;
  if (code === Code.Canceled) return; // the page moved on
  const friendly = describeError(err);
  if (code === Code.PermissionDenied) setDenied(friendly.message);
  setError(friendly);
}

interface Chart {
  series: ChartSeries[];
  rows: ChartRow[];
}

/** Every bucket of the range (empty ones too, so time reads evenly), stacked by `dimension`. */
function chartFor(spend: GetSpendResponse, dimension: SpendDimension, name: string, startMs: number, range: RangeId): Chart {
  const { bucketS, buckets } = RANGES[range];
  const series: ChartSeries[] = spend.groups
    .filter((g) => g.dimension === dimension)
    .map((g) => ({
      key: g.key,
      label: keyLabel(name, g.key),
      costMicroUsd: Number(g.totals?.costMicroUsd ?? 0n),
      requests: Number(g.totals?.requests ?? 0n),
    }));
  // A key only in the buckets (the overall breakdown may be cut to the costliest) still stacks.
  const known = new Set(series.map((s) => s.key));
  for (const bucket of spend.buckets) {
    for (const g of bucket.groups) {
      if (g.dimension === dimension && !known.has(g.key)) {
        known.add(g.key);
        series.push({ key: g.key, label: keyLabel(name, g.key), costMicroUsd: 0, requests: 0 });
      }
    }
  }
  // In key order, so each key keeps its colour and place from one refresh to the next.
  series.sort((a, b) => a.key.localeCompare(b.key, "en", { numeric: true }));
  const index = new Map(series.map((s, i) => [s.key, i]));
  const rows: ChartRow[] = [];
  const byStart = new Map<number, ChartRow>();
  for (let i = 0; i < buckets; i++) {
    const at = startMs + i * bucketS * 1000;
    const row: ChartRow = { label: bucketLabel(at, range) };
    series.forEach((_, j) => (row[seriesId(j)] = 0));
    rows.push(row);
    byStart.set(at, row);
  }
  for (const bucket of spend.buckets) {
    const row = bucket.startTime ? byStart.get(timestampMs(bucket.startTime)) : undefined;
    if (!row) continue;
    for (const g of bucket.groups) {
      const j = g.dimension === dimension ? index.get(g.key) : undefined;
      if (j !== undefined) row[seriesId(j)] = Number(g.totals?.costMicroUsd ?? 0n) / 1e6;
    }
  }
  return { series, rows };
}

function Dashboard({ session, edgeUrl }: { session: Session; edgeUrl: string }) {
  const [range, setRange] = useState<RangeId>("hour");
  const [spend, setSpend] = useState<{ range: RangeId; startMs: number; data: GetSpendResponse; at: number } | null>(null);
  const [spendError, setSpendError] = useState<FriendlyError | null>(null);
  const [models, setModels] = useState<{ list: ModelInfo[]; at: number } | null>(null);
  const [modelsError, setModelsError] = useState<FriendlyError | null>(null);
  const [denied, setDenied] = useState<string | null>(null);

  useEffect(() => {
    const controller = new AbortController();
    const { bucketS, buckets } = RANGES[range];
    async function load() {
      const now = Date.now();
      // Buckets aligned to their size, so refreshes keep the same boundaries.
      const startMs = (Math.floor(now / 1000 / bucketS) - (buckets - 1)) * bucketS * 1000;
      try {
        const data = await clients(edgeUrl).analytics.getSpend(
          create(GetSpendRequestSchema, {
            startTime: timestampFromMs(startMs),
            endTime: timestampFromMs(now),
            bucketS,
            groupBy: DIMENSIONS.map((d) => d.dimension),
          }),
          callOptions(session.token, controller.signal, READ_TIMEOUT_MS),
        );
        setSpend({ range, startMs, data, at: Date.now() });
        setSpendError(null);
      } catch (err) {
        report(err, setSpendError, setDenied);
      }
    }
    void load();
    const timer = setInterval(() => void load(), SPEND_REFRESH_MS);
    return () => {
      clearInterval(timer);
      controller.abort();
    };
  }, [range, edgeUrl, session.token]);

  useEffect(() => {
    const controller = new AbortController();
    async function load() {
      try {
        const res = await clients(edgeUrl).inference.listModels(
          create(ListModelsRequestSchema, {}),
          callOptions(session.token, controller.signal, READ_TIMEOUT_MS),
        );
        setModels({ list: res.models, at: Date.now() });
        setModelsError(null);
      } catch (err) {
        report(err, setModelsError, setDenied);
      }
    }
    void load();
    const timer = setInterval(() => void load(), MODELS_REFRESH_MS);
    return () => {
      clearInterval(timer);
      controller.abort();
    };
  }, [edgeUrl, session.token]);

  const current = spend && spend.range === range ? spend : null;
  const totals = current?.data.totals;
  const unit = RANGES[range].unit;
  return (
    <div data-testid="ops" className="ops-body">
      {denied ? (
        <p className="refused" role="alert" data-testid="ops-refused">
          {denied}
        </p>
      ) : null}

      <section aria-labelledby="spend-title" className="ops-section">
        <div className="section-head">
          <h2 id="spend-title">Spend</h2>
          <div className="field field-inline">
            <label htmlFor="range">Range</label>
            <select id="range" data-testid="range" value={range} onChange={(e) => setRange(e.target.value as RangeId)}>
              {(Object.keys(RANGES) as RangeId[]).map((id) => (
                <option key={id} value={id}>
                  {RANGES[id].label}
                </option>
              ))}
            </select>
          </div>
        </div>
        <OpsError error={spendError} what="Spend" />
        <dl className="totals" data-testid="totals">
          <div>
            <dt>Requests</dt>
            <dd data-testid="total-requests">{totals ? integer(totals.requests) : "—"}</dd>
          </div>
          <div>
            <dt>Tokens</dt>
            <dd data-testid="total-tokens">{totals ? integer(totals.promptTokens + totals.completionTokens) : "—"}</dd>
          </div>
          <div>
            <dt>Cost</dt>
            <dd data-testid="total-cost" data-cost-micro-usd={totals ? String(totals.costMicroUsd) : ""}>
              {totals ? usd(totals.costMicroUsd) : "—"}
            </dd>
          </div>
        </dl>
        <div className="charts">
          {DIMENSIONS.map((d) => {
            const chart = current ? chartFor(current.data, d.dimension, d.name, current.startMs, range) : { series: [], rows: [] };
            return (
              <SpendChart
                key={d.testId}
                testId={d.testId}
                caption={`Cost per ${unit} by ${d.name}, ${RANGES[range].label.toLowerCase()}`}
                axisLabel={`Time (per ${unit})`}
                series={chart.series}
                rows={chart.rows}
              />
            );
          })}
        </div>
        <p className="muted" data-testid="spend-updated">
          Last updated:{" "}
          {current ? <time dateTime={new Date(current.at).toISOString()}>{clock(current.at)}</time> : "never"} (refreshes every 10 s)
        </p>
      </section>

      <section aria-labelledby="models-title" className="ops-section">
        <h2 id="models-title">Deployments</h2>
        <OpsError error={modelsError} what="Deployments" />
        <ModelsTable models={models?.list ?? []} updatedAt={models?.at ?? null} />
      </section>
    </div>
  );
}

function OpsError({ error, what }: { error: FriendlyError | null; what: string }) {
  if (!error || error.code === "permission_denied") return null;
  return (
    <p className="error" role="alert">
      {what} could not be loaded: <WithSignIn message={error.message} signIn={error.signIn} />
    </p>
  );
}
