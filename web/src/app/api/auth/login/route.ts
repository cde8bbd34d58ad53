// OpenID Connect sign-in, step 1: remember state, nonce and PKCE verifier in a short-lived
// httpOnly cookie and send the browser to the identity provider.
import { NextResponse } from "next/server";

import { oidc } from "@/lib/server/env";
import type { SignInErrorCode } from "@/lib/signinErrors";
import {
  challenge,
  discover,
  encodeFlow,
  FLOW_COOKIE,
  FLOW_COOKIE_PATH,
  FLOW_MAX_AGE_S,
  localRedirect,
  newFlow,
  redirectUri,
} from "@/lib/server/oidc";

export const dynamic = "force-dynamic";

export async function GET(request: Request): Promise<Response> {
  const settings = oidc();
  if (!settings) return Response.json({ error: "OpenID Connect sign-in is not configured" }, { status: 404 });
  let authorize: URL;
  const flow = newFlow();
  try {
    const discovery = await discover(settings);
    authorize = new URL(discovery.authorization_endpoint);
  } catch (err) {
    console.error("oidc login:", err);
    return localRedirect(`/signin?error=${"unreachable" satisfies SignInErrorCode}`);
  }
  const redirect = redirectUri(settings, request);
  authorize.searchParams.set("response_type", "code");
  authorize.searchParams.set("client_id", settings.clientId);
  authorize.searchParams.set("redirect_uri", redirect);
  authorize.searchParams.set("scope", settings.scopes);
  authorize.searchParams.set("state", flow.state);
  authorize.searchParams.set("nonce", flow.nonce);
  authorize.searchParams.set("code_challenge", challenge(flow.verifier));
  authorize.searchParams.set("code_challenge_method", "S256");
  const response = NextResponse.redirect(authorize, 303);
  response.headers.set("cache-control", "no-store");
  response.cookies.set(FLOW_COOKIE, encodeFlow(flow), {
    httpOnly: true,
    sameSite: "lax",
    secure: redirect.startsWith("https:"),
    path: FLOW_COOKIE_PATH,
    maxAge: FLOW_MAX_AGE_S,
  });
  return response;
}
