import Link from "next/link";

/** The way back in, wherever a session is missing or over. */
export function SignInLink() {
  return (
    <Link href="/signin" data-testid="signin-link">
      Sign in
    </Link>
  );
}

/** A message followed by the sign-in link, for an error a new session resolves. */
export function WithSignIn({ message, signIn }: { message: string; signIn: boolean }) {
  return (
    <>
      {message}
      {signIn ? (
        <>
          {" "}
          <SignInLink />
        </>
      ) : null}
    </>
  );
}

/** What a signed-out visitor sees instead of a page that needs a session. */
export function SignInPrompt({ what }: { what: string }) {
  return (
    <div className="panel" data-testid="signed-out">
      <p>
        You&apos;re not signed in. <SignInLink /> to {what}.
      </p>
    </div>
  );
}
