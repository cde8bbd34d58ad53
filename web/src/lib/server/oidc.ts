// OpenID Connect sign-in (Authorization Code with PKCE), done by the app's server: discovery,
// the login redirect, and the code exchange. The browser only ever sees the resulting token.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

import type { OidcSettings } from "@/lib/server/env";

export const FLOW_COOKIE = "tiermesh_oidc";
export const FLOW_COOKIE_PATH = "/api/auth";
export const FLOW_MAX_AGE_S = 600;

export interface Discovery {
  issuer: string;
  authorization_endpoint: string;
  token_endpoint: string;
}

export interface Flow {
  state: string;
  verifier: string;
  nonce: string;
}

const DISCOVERY_TTL_MS = 5 * 60 * 1000;
let cached: { issuer: string; at: number; value: Discovery } | null = null;

export async function discover(settings: OidcSettings): Promise<Discovery> {
  if (cached && cached.issuer === settings.issuer && Date.now() - cached.at < DISCOVERY_TTL_MS) {
    return cached.value;
  }
  const url = `${settings.issuer}/.well-known/openid-configuration`;
  const res = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
  if (!res.ok) throw new Error(`OpenID discovery at ${url} answered HTTP ${res.status}`);
  const doc = (await res.json()) as Partial<Discovery>;
  if (typeof doc.authorization_endpoint !== "string" || typeof doc.token_endpoint !== "string") {
    throw new Error(`OpenID discovery at ${url} has no authorization_endpoint or token_endpoint`);
  }
  if (typeof doc.issuer === "string" && doc.issuer.replace(/\/+$/, "") !== settings.issuer) {
    throw new Error(`OpenID discovery at ${url} names another issuer (${doc.issuer})`);
  }
  const value: Discovery = {
    issuer: doc.issuer ?? settings.issuer,
    authorization_endpoint: doc.authorization_endpoint,
    token_endpoint: doc.token_endpoint,
  };
  cached = { issuer: settings.issuer, at: Date.now(), value };
  return value;
}

function random(): string {
  return randomBytes(32).toString("base64url");
}

export function newFlow(): Flow {
  return { state: random(), verifier: random(), nonce: random() };
}

export function challenge(verifier: string): string {
  return createHash("sha256").update(verifier).digest("base64url");
}

export function encodeFlow(flow: Flow): string {
  return Buffer.from(JSON.stringify(flow)).toString("base64url");
}

export function decodeFlow(raw: string | undefined): Flow | null {
  if (!raw) return null;
  try {
    const flow = JSON.parse(Buffer.from(raw, "base64url").toString("utf8")) as Partial<Flow>;
    if (typeof flow.state === "string" && typeof flow.verifier === "string" && typeof flow.nonce === "string") {
      return { state: flow.state, verifier: flow.verifier, nonce: flow.nonce };
    }
  } catch {
    // a cookie that is not ours
  }
  return null;
}

export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function firstValue(header: string | null): string | null {
  const value = header?.split(",")[0]?.trim();
  return value ? value : null;
}

/**
 * The app's origin as the browser sees it: TIERMESH_PUBLIC_URL when set, else the request's
 * Host (or the X-Forwarded-* headers a proxy in front adds). Next's own `request.url` names the
 * server's bind address, not what the browser used, and the state cookie lives on the latter.
 * A forged Host gains nothing: the identity provider only redirects to registered URIs.
 */
export function appOrigin(settings: OidcSettings, request: Request): string {
  if (settings.publicUrl) return settings.publicUrl;
  const url = new URL(request.url);
  const host = firstValue(request.headers.get("x-forwarded-host")) ?? firstValue(request.headers.get("host"));
  const proto = firstValue(request.headers.get("x-forwarded-proto")) ?? url.protocol.replace(/:$/, "");
  return host && /^https?$/.test(proto) ? `${proto}://${host}` : url.origin;
}

/** Where the identity provider sends the browser back to. */
export function redirectUri(settings: OidcSettings, request: Request): string {
  return `${appOrigin(settings, request)}/api/auth/callback`;
}

/** A redirect within the app: a relative Location, so it stays on the origin the browser used. */
export function localRedirect(path: string): Response {
  return new Response(null, { status: 303, headers: { location: path, "cache-control": "no-store" } });
}

/** The claims of a JWT, unverified: the edge verifies the signature, this only reads them. */
export function jwtClaims(token: string): Record<string, unknown> | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const claims: unknown = JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
    return claims && typeof claims === "object" ? (claims as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

export interface TokenResponse {
  id_token?: string;
  access_token?: string;
}

export async function exchangeCode(
  settings: OidcSettings,
  discovery: Discovery,
  code: string,
  verifier: string,
  redirect: string,
): Promise<TokenResponse> {
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code,
    redirect_uri: redirect,
    client_id: settings.clientId,
    code_verifier: verifier,
  });
  if (settings.clientSecret) body.set("client_secret", settings.clientSecret);
  const res = await fetch(discovery.token_endpoint, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", accept: "application/json" },
    body,
    cache: "no-store",
  });
  const data = (await res.json().catch(() => ({}))) as TokenResponse & { error?: string; error_description?: string };
  if (!res.ok) {
    throw new Error(`the token endpoint refused the code: ${data.error_description ?? data.error ?? `HTTP ${res.status}`}`);
  }
  return data;
}
