// Server-side runtime configuration, read from the environment on every request (never at build
// time), so one build serves any mesh.

export const DEFAULT_EDGE_URL = "http://127.0.0.1:8080";
export const DEFAULT_ISSUER = "https://tiermesh.dev/issuer";
export const DEFAULT_AUDIENCE = "tiermesh";
export const DEFAULT_OIDC_SCOPES = "openid profile";

export interface DevSignInSettings {
  keyFile: string;
  jwksFile: string;
  issuer: string;
  audience: string;
}

export interface OidcSettings {
  issuer: string;
  clientId: string;
  clientSecret: string | null;
  scopes: string;
  /** Which token of the token response the browser sends to the edge. */
  tokenKind: "id_token" | "access_token";
  /** The app's public origin, when it differs from what the request says (behind a proxy). */
  publicUrl: string | null;
}

function read(name: string): string | null {
  const value = process.env[name]?.trim();
  return value ? value : null;
}

export function edgeUrl(): string {
  return (read("TIERMESH_EDGE_URL") ?? DEFAULT_EDGE_URL).replace(/\/+$/, "");
}

/** Dev sign-in is on exactly when TIERMESH_DEV_KEY_FILE is set. */
export function devSignIn(): DevSignInSettings | null {
  const keyFile = read("TIERMESH_DEV_KEY_FILE");
  if (!keyFile) return null;
  return {
    keyFile,
    jwksFile: read("TIERMESH_DEV_JWKS_FILE") ?? "",
    issuer: read("TIERMESH_AUTH_ISSUER") ?? DEFAULT_ISSUER,
    audience: read("TIERMESH_AUTH_AUDIENCE") ?? DEFAULT_AUDIENCE,
  };
}

/** OpenID Connect is on when both TIERMESH_OIDC_ISSUER and TIERMESH_OIDC_CLIENT_ID are set. */
export function oidc(): OidcSettings | null {
  const issuer = read("TIERMESH_OIDC_ISSUER");
  const clientId = read("TIERMESH_OIDC_CLIENT_ID");
  if (!issuer || !clientId) return null;
  return {
    issuer: issuer.replace(/\/+$/, ""),
    clientId,
    clientSecret: read("TIERMESH_OIDC_CLIENT_SECRET"),
    scopes: read("TIERMESH_OIDC_SCOPES") ?? DEFAULT_OIDC_SCOPES,
    tokenKind: read("TIERMESH_OIDC_TOKEN") === "access_token" ? "access_token" : "id_token",
    publicUrl: read("TIERMESH_PUBLIC_URL")?.replace(/\/+$/, "") ?? null,
  };
}
