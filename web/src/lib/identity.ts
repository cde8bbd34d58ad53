// The identity rules the edge enforces on a token's claims, shared by the sign-in form and the
// token endpoint so both say no for the same reasons.

export const SEGMENTS = ["standard", "vip", "enterprise"] as const;
export type SegmentName = (typeof SEGMENTS)[number];

export const MAX_USER_CHARS = 256;

// C0 and C1 control characters (a user id becomes an HTTP header at the edge).
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

export function isSegment(value: unknown): value is SegmentName {
  return typeof value === "string" && (SEGMENTS as readonly string[]).includes(value);
}

/** Why `user` cannot be a token's `sub`, or null when it can. */
export function userProblem(user: unknown): string | null {
  if (typeof user !== "string") return "user must be a string";
  const chars = [...user].length;
  if (chars < 1 || user.trim() === "") return "user must not be empty";
  if (chars > MAX_USER_CHARS) return `user must be at most ${MAX_USER_CHARS} characters`;
  if (CONTROL.test(user)) return "user must not contain control characters";
  return null;
}
