// Development tokens: an ES256 JWT signed with the mesh's development key (the same key pair
// `tiermesh up` writes and Envoy trusts). The private key stays on the server.
import { createPrivateKey, sign } from "node:crypto";
import { readFile } from "node:fs/promises";

import type { DevSignInSettings } from "@/lib/server/env";

export const TOKEN_LIFETIME_S = 3600;

export interface DevClaims {
  user: string;
  segment: string;
  operator: boolean;
}

export interface MintedToken {
  token: string;
  /** Expiry, in milliseconds since the epoch. */
  expiresAt: number;
}

export function base64url(data: Buffer | string): string {
  return Buffer.from(data).toString("base64url");
}

async function firstKid(jwksFile: string): Promise<string> {
  if (!jwksFile) throw new Error("TIERMESH_DEV_JWKS_FILE is not set");
  const jwks: unknown = JSON.parse(await readFile(jwksFile, "utf8"));
  const keys = (jwks as { keys?: unknown }).keys;
  const kid = Array.isArray(keys) ? (keys[0] as { kid?: unknown } | undefined)?.kid : undefined;
  if (typeof kid !== "string" || !kid) throw new Error(`${jwksFile}: the first key has no "kid"`);
  return kid;
}

export async function mintDevToken(settings: DevSignInSettings, claims: DevClaims): Promise<MintedToken> {
  const [pem, kid] = await Promise.all([readFile(settings.keyFile, "utf8"), firstKid(settings.jwksFile)]);
  const key = createPrivateKey(pem);
  const now = Math.floor(Date.now() / 1000);
  const exp = now + TOKEN_LIFETIME_S;
  const header = { alg: "ES256", typ: "JWT", kid };
  const payload: Record<string, string | number> = {
    iss: settings.issuer,
    aud: settings.audience,
    sub: claims.user,
    segment: claims.segment,
    iat: now,
    nbf: now,
    exp,
  };
  if (claims.operator) payload.role = "operator";
  const data = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(payload))}`;
  const signature = sign("sha256", Buffer.from(data), { key, dsaEncoding: "ieee-p1363" });
  return { token: `${data}.${base64url(signature)}`, expiresAt: exp * 1000 };
}
