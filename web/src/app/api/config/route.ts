// What the browser needs to know at run time: where the edge is and how to sign in.
import { devSignIn, edgeUrl, oidc } from "@/lib/server/env";
import type { AppConfig } from "@/lib/config";

export const dynamic = "force-dynamic";

export function GET(): Response {
  const provider = oidc();
  const body: AppConfig = {
    edgeUrl: edgeUrl(),
    devSignIn: devSignIn() !== null,
    oidc: provider ? { issuer: provider.issuer, loginUrl: "/api/auth/login" } : null,
  };
  return Response.json(body, { headers: { "cache-control": "no-store" } });
}
