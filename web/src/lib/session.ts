// The signed-in session, kept in sessionStorage (one tab, gone when the tab closes). Plain
// functions only: the callback route handler imports the key and the type.
import { isSegment, type SegmentName } from "@/lib/identity";

export const SESSION_KEY = "tiermesh.session";
const CHANGED = "tiermesh:session-changed";

export interface Session {
  /** The bearer token the edge verifies. */
  token: string;
  user: string;
  segment: SegmentName;
  operator: boolean;
  /** When the token expires, in milliseconds since the epoch. */
  expiresAt: number;
}

export function parseSession(raw: string | null): Session | null {
  if (!raw) return null;
  try {
    const value = JSON.parse(raw) as Partial<Record<keyof Session, unknown>>;
    const expiresAt =
      typeof value.expiresAt === "number" ? value.expiresAt : typeof value.expiresAt === "string" ? Date.parse(value.expiresAt) : NaN;
    if (typeof value.token !== "string" || !value.token || typeof value.user !== "string" || !isSegment(value.segment)) {
      return null;
    }
    return {
      token: value.token,
      user: value.user,
      segment: value.segment,
      operator: value.operator === true,
      expiresAt: Number.isFinite(expiresAt) ? expiresAt : 0,
    };
  } catch {
    return null;
  }
}

export function isExpired(session: Session, now = Date.now()): boolean {
  return session.expiresAt <= now;
}

function storage(): Storage | null {
  try {
    return typeof window === "undefined" ? null : window.sessionStorage;
  } catch {
    return null; // storage disabled by the browser
  }
}

export function readSessionRaw(): string | null {
  return storage()?.getItem(SESSION_KEY) ?? null;
}

export function saveSession(session: Session): void {
  storage()?.setItem(SESSION_KEY, JSON.stringify(session));
  window.dispatchEvent(new Event(CHANGED));
}

export function clearSession(): void {
  storage()?.removeItem(SESSION_KEY);
  window.dispatchEvent(new Event(CHANGED));
}

/** Calls `onChange` when the session changes in this tab (or storage changes in another). */
export function subscribeSession(onChange: () => void): () => void {
  window.addEventListener(CHANGED, onChange);
  window.addEventListener("storage", onChange);
  return () => {
    window.removeEventListener(CHANGED, onChange);
    window.removeEventListener("storage", onChange);
  };
}
