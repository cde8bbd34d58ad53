"use client";
// One breakdown of spend over time: a stacked bar chart of cost per bucket, one stack per key.
import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";

import { integer, usd } from "@/lib/format";
import { useReducedMotion } from "@/lib/useReducedMotion";

export interface ChartSeries {
  /** The dimension's value (a tier number, a model, a segment). */
  key: string;
  label: string;
  costMicroUsd: number;
  requests: number;
}

export interface ChartRow {
  /** The bucket's label on the time axis. */
  label: string;
  /** Cost in dollars per series, under the series' safe id (`s0`, `s1`...). */
  [seriesId: string]: string | number;
}

// Distinct hues, each at least 3:1 against the white plot background.
const PALETTE = ["#1f5fbf", "#b3541e", "#2e7d32", "#7b1fa2", "#00838f", "#c2185b", "#5d4037", "#455a64", "#9e6a00", "#3949ab"];

export const seriesId = (i: number): string => `s${i}`;

const AXIS_TEXT = "#4f5863";

/** Dollars on the cost axis: two significant digits, never exponent notation. */
function axisDollars(v: number): string {
  if (v === 0) return "$0";
  return `$${Number(v.toPrecision(2)).toLocaleString("en-US", { maximumFractionDigits: 8 })}`;
}

export interface SpendChartProps {
  testId: string;
  caption: string;
  series: ChartSeries[];
  rows: ChartRow[];
  axisLabel: string;
}

export function SpendChart({ testId, caption, series, rows, axisLabel }: SpendChartProps) {
  const still = useReducedMotion();
  return (
    <figure className="chart" data-testid={testId}>
      <figcaption>{caption}</figcaption>
      <div className="chart-box">
        <ResponsiveContainer width="100%" height={280}>
          <BarChart data={rows} margin={{ top: 8, right: 8, bottom: 28, left: 16 }}>
            <CartesianGrid strokeDasharray="3 3" stroke="#d0d4da" />
            <XAxis
              dataKey="label"
              tick={{ fontSize: 12, fill: AXIS_TEXT }}
              label={{ value: axisLabel, position: "insideBottom", offset: -18, fill: AXIS_TEXT }}
            />
            <YAxis
              tick={{ fontSize: 12, fill: AXIS_TEXT }}
              tickFormatter={axisDollars}
              width={72}
              label={{ value: "Cost (USD)", angle: -90, position: "insideLeft", offset: -8, fill: AXIS_TEXT }}
            />
            <Tooltip formatter={(value) => (typeof value === "number" ? usd(Math.round(value * 1e6), 6) : String(value ?? ""))} />
            <Legend verticalAlign="top" height={28} />
            {series.map((s, i) => (
              <Bar
                key={s.key}
                dataKey={seriesId(i)}
                name={s.label}
                stackId="cost"
                fill={PALETTE[i % PALETTE.length]}
                isAnimationActive={!still}
              />
            ))}
          </BarChart>
        </ResponsiveContainer>
      </div>
      {series.length > 0 ? (
        <ul className="chart-totals" aria-label={`${caption}: totals`}>
          {series.map((s) => (
            <li key={s.key}>
              <span className="chart-key">{s.label}</span>: {usd(s.costMicroUsd, 6)} · {integer(s.requests)}{" "}
              {s.requests === 1 ? "request" : "requests"}
            </li>
          ))}
        </ul>
      ) : (
        <p className="muted">No requests in this range.</p>
      )}
    </figure>
  );
}
