// Dev sign-in: mints a short-lived ES256 token with the mesh's development key. Off (404) unless
// TIERMESH_DEV_KEY_FILE is set; never enable it in production.
import { isSegment, SEGMENTS, userProblem } from "@/lib/identity";
import { devSignIn } from "@/lib/server/env";
import { mintDevToken } from "@/lib/server/jwt";

export const dynamic = "force-dynamic";

const NO_STORE = { "cache-control": "no-store" };

function fail(status: number, error: string): Response {
  return Response.json({ error }, { status, headers: NO_STORE });
}

export async function POST(request: Request): Promise<Response> {
  const settings = devSignIn();
  if (!settings) return fail(404, "dev sign-in is off");
  // JSON only: a cross-site HTML form cannot send it without a CORS preflight.
  if (!request.headers.get("content-type")?.toLowerCase().startsWith("application/json")) {
    return fail(415, "send the sign-in as application/json");
  }
  let input: unknown;
  try {
    input = await request.json();
  } catch {
    return fail(400, "the body is not valid JSON");
  }
  if (!input || typeof input !== "object" || Array.isArray(input)) return fail(400, "the body must be a JSON object");
  const { user, segment, operator } = input as Record<string, unknown>;
  const problem = userProblem(user);
  if (problem) return fail(400, problem);
  if (!isSegment(segment)) return fail(400, `segment must be one of ${SEGMENTS.join(", ")}`);
  if (operator !== undefined && typeof operator !== "boolean") return fail(400, "operator must be true or false");
  try {
    const minted = await mintDevToken(settings, { user: user as string, segment, operator: operator === true });
    return Response.json(minted, { headers: NO_STORE });
  } catch (err) {
    console.error("dev sign-in: cannot mint a token:", err);
    return fail(500, "the development signing key could not be read; check TIERMESH_DEV_KEY_FILE and TIERMESH_DEV_JWKS_FILE");
  }
}
