"use client";
// The session as React state: `undefined` while not known yet (server render, hydration),
// `null` when signed out.
import { useSyncExternalStore } from "react";

import { parseSession, readSessionRaw, subscribeSession, type Session } from "@/lib/session";

let lastRaw: string | null = null;
let lastSession: Session | null = null;

function snapshot(): Session | null {
  const raw = readSessionRaw();
  if (raw !== lastRaw) {
    lastRaw = raw;
    lastSession = parseSession(raw);
  }
  return lastSession;
}

export function useSession(): Session | null | undefined {
  return useSyncExternalStore<Session | null | undefined>(subscribeSession, snapshot, () => undefined);
}
