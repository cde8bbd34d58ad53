"use client";
// Runtime configuration from GET /api/config, fetched once per page load.
import { useSyncExternalStore } from "react";

export interface AppConfig {
  /** The Envoy edge the browser calls over gRPC-Web. */
  edgeUrl: string;
  /** Whether the development sign-in form is available. */
  devSignIn: boolean;
  /** OpenID Connect sign-in, when configured. */
  oidc: { issuer: string; loginUrl: string } | null;
}

export type ConfigState = { status: "loading" } | { status: "ready"; config: AppConfig } | { status: "error"; message: string };

const LOADING: ConfigState = { status: "loading" };
let state: ConfigState = LOADING;
let started = false;
const listeners = new Set<() => void>();

function set(next: ConfigState): void {
  state = next;
  listeners.forEach((l) => l());
}

function load(): void {
  if (started) return;
  started = true;
  fetch("/api/config", { cache: "no-store" })
    .then(async (res) => {
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      set({ status: "ready", config: (await res.json()) as AppConfig });
    })
    .catch((err: unknown) => {
      started = false; // the next subscriber tries again
      set({ status: "error", message: `The app's configuration could not be loaded (${String(err)}).` });
    });
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  load();
  return () => listeners.delete(listener);
}

export function useConfig(): ConfigState {
  return useSyncExternalStore(
    subscribe,
    () => state,
    () => LOADING,
  );
}
