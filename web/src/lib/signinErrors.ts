// Why an OpenID Connect sign-in failed, by code: the callback redirects to /signin?error=<code>,
// so a crafted link can only ever show one of these fixed messages.
export const SIGNIN_ERRORS = {
  unreachable: "The identity provider could not be reached. Try again later.",
  refused: "The identity provider refused the sign-in.",
  state: "The sign-in expired or did not start here. Please try again.",
  exchange: "The sign-in could not be completed with the identity provider.",
  nonce: "The identity provider's answer did not match this sign-in. Please try again.",
  token: "The identity provider did not return a token tiermesh can use.",
  claims: "Your identity provider's token lacks the claims tiermesh needs (sub, segment and exp). Ask an administrator to add them.",
} as const;

export type SignInErrorCode = keyof typeof SIGNIN_ERRORS;

export function signInErrorMessage(code: string | null | undefined): string | null {
  if (!code) return null;
  return code in SIGNIN_ERRORS ? SIGNIN_ERRORS[code as SignInErrorCode] : "The sign-in failed. Please try again.";
}
