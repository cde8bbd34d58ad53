// OpenID Connect sign-in, step 2: check the state, exchange the code (with the PKCE verifier)
// at the token endpoint, and hand the token to the browser through a tiny page that puts the
// session in sessionStorage and goes home. The token never appears in a URL.
import { NextResponse, type NextRequest } from "next/server";

import { isSegment } from "@/lib/identity";
import { SESSION_KEY, type Session } from "@/lib/session";
import type { SignInErrorCode } from "@/lib/signinErrors";
import { oidc } from "@/lib/server/env";
import {
  decodeFlow,
  discover,
  exchangeCode,
  FLOW_COOKIE,
  FLOW_COOKIE_PATH,
  jwtClaims,
  localRedirect,
  redirectUri,
  sameSecret,
} from "@/lib/server/oidc";

export const dynamic = "force-dynamic";

const FORGET_FLOW = `${FLOW_COOKIE}=; Path=${FLOW_COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Lax`;

function backToSignIn(code: SignInErrorCode): Response {
  const response = localRedirect(`/signin?error=${code}`);
  response.headers.append("set-cookie", FORGET_FLOW);
  return response;
}

// JSON inside a <script>: escape what could end the script element or confuse an HTML parser.
function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, "\\u003c")
    .replace(/>/g, "\\u003e")
    .replace(/&/g, "\\u0026")
    .replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
}

function handOver(session: Session): Response {
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signing in… · tiermesh</title></head>
<body><p>Signing in…</p>
<script>
try { sessionStorage.setItem(${scriptJson(SESSION_KEY)}, JSON.stringify(${scriptJson(session)})); location.replace("/"); }
catch (e) { document.body.textContent = "Sign-in needs sessionStorage, which this browser refused."; }
</script></body></html>`;
  const response = new NextResponse(html, {
    headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" },
  });
  response.cookies.set(FLOW_COOKIE, "", { path: FLOW_COOKIE_PATH, maxAge: 0 });
  return response;
}

export async function GET(request: NextRequest): Promise<Response> {
  const settings = oidc();
  if (!settings) return Response.json({ error: "OpenID Connect sign-in is not configured" }, { status: 404 });
  const params = request.nextUrl.searchParams;
  const providerError = params.get("error");
  if (providerError) {
    console.error("oidc callback: the provider refused:", providerError, params.get("error_description") ?? "");
    return backToSignIn("refused");
  }
  const flow = decodeFlow(request.cookies.get(FLOW_COOKIE)?.value);
  const code = params.get("code");
  const state = params.get("state");
  if (!flow || !code || !state || !sameSecret(state, flow.state)) {
    return backToSignIn("state");
  }
  let token: string | undefined;
  try {
    const discovery = await discover(settings);
    const tokens = await exchangeCode(settings, discovery, code, flow.verifier, redirectUri(settings, request));
    const idClaims = tokens.id_token ? jwtClaims(tokens.id_token) : null;
    if (idClaims && idClaims.nonce !== flow.nonce) {
      return backToSignIn("nonce");
    }
    token = settings.tokenKind === "access_token" ? tokens.access_token : tokens.id_token;
  } catch (err) {
    console.error("oidc callback:", err);
    return backToSignIn("exchange");
  }
  const claims = token ? jwtClaims(token) : null;
  if (!token || !claims) {
    console.error(`oidc callback: no JWT ${settings.tokenKind} in the token response`);
    return backToSignIn("token");
  }
  const sub = claims.sub;
  const segment = claims.segment;
  const exp = claims.exp;
  if (typeof sub !== "string" || !sub || !isSegment(segment) || typeof exp !== "number") {
    console.error("oidc callback: the token lacks sub, segment (standard, vip or enterprise) or exp");
    return backToSignIn("claims");
  }
  return handOver({ token, user: sub, segment, operator: claims.role === "operator", expiresAt: exp * 1000 });
}
