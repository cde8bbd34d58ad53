// Turns RPC failures into what a person can act on.
import { Code, ConnectError } from "@connectrpc/connect";

export interface FriendlyError {
  /** The gRPC code name in lower case (e.g. `unavailable`), for tests and logs. */
  code: string;
  /** What to show. */
  message: string;
  /** Whether signing in again is the way out. */
  signIn: boolean;
}

function codeName(code: Code): string {
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** Seconds until the rate limit resets, from the `x-ratelimit-reset` header or trailer. */
export function rateLimitReset(err: ConnectError): number | null {
  const raw = err.metadata.get("x-ratelimit-reset");
  if (!raw) return null;
  const seconds = Number.parseInt(raw.split(",")[0].trim(), 10);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null;
}

/** The edge's rate limit said no, rather than a service (a spent budget). Envoy puts the
 * `x-ratelimit-*` headers on every answer, so their presence says nothing; its denial carries
 * the message the edge's local reply gives every 429. */
export function isRateLimited(err: ConnectError): boolean {
  return err.rawMessage.trim() === RATE_LIMITED;
}

/** grpc-message of the edge's rate-limit denials (gateway/envoy.py's local replies). */
const RATE_LIMITED = "rate limit exceeded";

export function isCanceled(err: unknown): boolean {
  return ConnectError.from(err).code === Code.Canceled;
}

export function describeError(err: unknown): FriendlyError {
  const e = ConnectError.from(err);
  const server = e.rawMessage.trim();
  const code = codeName(e.code);
  switch (e.code) {
    case Code.ResourceExhausted: {
      const reset = rateLimitReset(e);
      if (reset !== null && isRateLimited(e)) {
        const n = Math.max(1, reset);
        return { code, signIn: false, message: `You're sending messages too fast. Try again in ${n} second${n === 1 ? "" : "s"}.` };
      }
      return { code, signIn: false, message: server ? `Your monthly budget is spent. ${server}` : "Your monthly budget is spent." };
    }
    case Code.Unauthenticated:
      return { code, signIn: true, message: "You're signed out or your session expired." };
    case Code.PermissionDenied:
      return { code, signIn: false, message: server || "You're not allowed to do that." };
    case Code.Unavailable:
      return { code, signIn: false, message: "The service is unavailable right now. Please try again in a moment." };
    case Code.DeadlineExceeded:
      return { code, signIn: false, message: "The answer took too long." };
    case Code.InvalidArgument:
      return { code, signIn: false, message: server || "The request was not valid." };
    case Code.Canceled:
      return { code, signIn: false, message: "The request was cancelled." };
    default:
      // A fetch that never reached the edge (network down, CORS) surfaces as a TypeError.
      if (e.code === Code.Unknown && e.cause instanceof TypeError) {
        return { code, signIn: false, message: "The service can't be reached right now. Check your connection and try again." };
      }
      return { code, signIn: false, message: `Something went wrong (${code.replace(/_/g, " ")}). Please try again.` };
  }
}
