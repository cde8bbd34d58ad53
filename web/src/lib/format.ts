// Display helpers: money, enums, times.
import { Complexity, Intent, Segment, Tier } from "@/gen/tiermesh/common/v1/common_pb";

/** Micro-dollars as dollars with enough decimals to show small amounts (at least 2, up to 6). */
export function usd(microUsd: number | bigint, decimals?: number): string {
  const micro = Number(microUsd);
  if (decimals !== undefined) return `$${(micro / 1e6).toFixed(decimals)}`;
  if (micro === 0) return "$0.00";
  if (Math.abs(micro) >= 10_000) return `$${(micro / 1e6).toFixed(Math.abs(micro) >= 1_000_000 ? 2 : 4)}`;
  return `$${(micro / 1e6).toFixed(6)}`;
}

/** A price per million tokens, given in micro-dollars. */
export function pricePerMtok(microUsd: number | bigint): string {
  const dollars = Number(microUsd) / 1e6;
  return `$${dollars.toFixed(dollars < 1 && dollars !== 0 ? 3 : 2)}`;
}

function lower(name: string | undefined): string {
  return (name ?? "unknown").toLowerCase().replace(/_/g, " ");
}

export const intentName = (v: Intent): string => lower(Intent[v]);
export const complexityName = (v: Complexity): string => lower(Complexity[v]);
export const segmentName = (v: Segment): string => (v === Segment.UNSPECIFIED ? "standard" : lower(Segment[v]));
export const tierName = (v: Tier): string => lower(Tier[v]);

export function percent(fraction: number): string {
  return `${Math.round(fraction * 100)}%`;
}

export function integer(n: number | bigint): string {
  return Number(n).toLocaleString("en-US");
}

export function clock(ms: number): string {
  return new Date(ms).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
