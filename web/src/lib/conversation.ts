// The chat of this tab: turns as plain, serialisable views of the stream's events, kept in
// sessionStorage, and the request messages made from them.
import { create } from "@bufbuild/protobuf";

import { ChatMessageSchema, ChatRole, type ChatMessage } from "@/gen/tiermesh/common/v1/common_pb";
import type { ChatDone, Citation, RouteDecision } from "@/gen/tiermesh/router/v1/router_service_pb";
import type { FriendlyError } from "@/lib/errors";
import { complexityName, intentName, segmentName, tierName } from "@/lib/format";

export const CONVERSATION_KEY = "tiermesh.conversation";
export const SESSION_COST_KEY = "tiermesh.session-cost";
/** The contract's limit on ChatRequest.messages. */
export const MAX_MESSAGES = 64;
/** The contract's limit on one message, in code points. */
export const MAX_MESSAGE_CHARS = 32_000;

export type AnswerState = "streaming" | "done" | "stopped" | "error";

export interface DecisionView {
  tier: number;
  tierName: string;
  intent: string;
  confidence: number;
  complexity: string;
  segment: string;
  reasons: string[];
  policyVersion: string;
  requestId: string;
}

export interface CitationView {
  index: number;
  title: string;
  documentId: string;
  score: number;
}

export interface DoneView {
  model: string;
  deployment: string;
  promptTokens: number;
  completionTokens: number;
  costMicroUsd: number;
  cached: boolean;
  degraded: boolean;
  knowledgeUnavailable: boolean;
  fallbackPath: string[];
}

export interface RestartView {
  failedDeployment: string;
  reason: string;
}

export interface UserTurn {
  kind: "user";
  key: string;
  text: string;
}

export interface AnswerTurn {
  kind: "assistant";
  key: string;
  state: AnswerState;
  text: string;
  citations: CitationView[];
  decision?: DecisionView;
  restart?: RestartView;
  done?: DoneView;
  error?: FriendlyError;
  /** Milliseconds from send to the first delta on screen. */
  firstTokenMs?: number;
}

export type Turn = UserTurn | AnswerTurn;

let counter = 0;

/** A short key, unique in this tab, usable in element ids. */
export function newKey(prefix: string): string {
  counter += 1;
  return `${prefix}${Date.now().toString(36)}${counter.toString(36)}`;
}

export function newAnswer(): AnswerTurn {
  return { kind: "assistant", key: newKey("a"), state: "streaming", text: "", citations: [] };
}

export function decisionView(d: RouteDecision): DecisionView {
  return {
    tier: d.tier,
    tierName: tierName(d.tier),
    intent: intentName(d.intent),
    confidence: d.intentConfidence,
    complexity: complexityName(d.complexity),
    segment: segmentName(d.segment),
    reasons: [...d.reasons],
    policyVersion: d.policyVersion,
    requestId: d.requestId,
  };
}

export function citationView(c: Citation): CitationView {
  return { index: c.index, title: c.title, documentId: c.documentId, score: c.score };
}

export function doneView(d: ChatDone): DoneView {
  return {
    model: d.model,
    deployment: d.deployment,
    promptTokens: d.usage?.promptTokens ?? 0,
    completionTokens: d.usage?.completionTokens ?? 0,
    costMicroUsd: Number(d.usage?.costMicroUsd ?? 0n),
    cached: d.cached,
    degraded: d.degraded,
    knowledgeUnavailable: d.knowledgeUnavailable,
    fallbackPath: [...d.fallbackPath],
  };
}

/** The request messages for `turns` (which end with the user's message): oldest first, the
 * last 64, answers only when they have text (a failed answer says nothing to the model). */
export function toMessages(turns: readonly Turn[]): ChatMessage[] {
  const messages: ChatMessage[] = [];
  for (const turn of turns) {
    if (turn.kind === "user") {
      messages.push(create(ChatMessageSchema, { role: ChatRole.USER, content: turn.text }));
    } else if (turn.text.trim() && (turn.state === "done" || turn.state === "stopped")) {
      messages.push(create(ChatMessageSchema, { role: ChatRole.ASSISTANT, content: turn.text }));
    }
  }
  return messages.slice(-MAX_MESSAGES);
}

function storage(): Storage | null {
  try {
    return typeof window === "undefined" ? null : window.sessionStorage;
  } catch {
    return null;
  }
}

function isTurn(value: unknown): value is Turn {
  if (!value || typeof value !== "object") return false;
  const t = value as { kind?: unknown; key?: unknown; text?: unknown; state?: unknown; citations?: unknown };
  if (typeof t.key !== "string" || typeof t.text !== "string") return false;
  if (t.kind === "user") return true;
  return t.kind === "assistant" && typeof t.state === "string" && Array.isArray(t.citations);
}

export function loadConversation(): Turn[] {
  try {
    const parsed: unknown = JSON.parse(storage()?.getItem(CONVERSATION_KEY) ?? "[]");
    if (!Array.isArray(parsed)) return [];
    // An answer that was streaming when the page went away was cut short.
    return parsed.filter(isTurn).map((t) => (t.kind === "assistant" && t.state === "streaming" ? { ...t, state: "stopped" } : t));
  } catch {
    return [];
  }
}

export function saveConversation(turns: readonly Turn[]): void {
  try {
    storage()?.setItem(CONVERSATION_KEY, JSON.stringify(turns));
  } catch {
    // storage full or disabled: the conversation still lives in memory
  }
}

export function loadSessionCost(): number {
  const value = Number(storage()?.getItem(SESSION_COST_KEY) ?? 0);
  return Number.isFinite(value) && value >= 0 ? value : 0;
}

export function saveSessionCost(microUsd: number): void {
  storage()?.setItem(SESSION_COST_KEY, String(microUsd));
}

/** Forget this tab's chat (on sign-in and sign-out). */
export function clearConversation(): void {
  storage()?.removeItem(CONVERSATION_KEY);
  storage()?.removeItem(SESSION_COST_KEY);
}
