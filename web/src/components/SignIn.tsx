"use client";
// Sign-in: the development form (a token minted by this app's server with the mesh's dev key),
// and/or OpenID Connect through the configured identity provider.
import { useRouter } from "next/navigation";
import { useState, type FormEvent } from "react";

import { useConfig } from "@/lib/config";
import { clearConversation } from "@/lib/conversation";
import { SEGMENTS, userProblem, type SegmentName } from "@/lib/identity";
import { saveSession } from "@/lib/session";
import { useSession } from "@/lib/useSession";

interface TokenAnswer {
  token?: string;
  expiresAt?: number;
  error?: string;
}

function DevSignIn() {
  const router = useRouter();
  const [user, setUser] = useState("ana");
  const [segment, setSegment] = useState<SegmentName>("standard");
  const [operator, setOperator] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    const problem = userProblem(user);
    if (problem) {
      setError(problem);
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const res = await fetch("/api/token", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user, segment, operator }),
      });
      const answer = (await res.json().catch(() => ({}))) as TokenAnswer;
      if (!res.ok || !answer.token || typeof answer.expiresAt !== "number") {
        setError(answer.error ?? `Sign-in failed (HTTP ${res.status}).`);
        return;
      }
      clearConversation();
      saveSession({ token: answer.token, user, segment, operator, expiresAt: answer.expiresAt });
      router.push("/");
    } catch {
      setError("Sign-in failed: the app's server could not be reached.");
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="panel form" onSubmit={submit} aria-labelledby="dev-title" data-testid="dev-signin">
      <h2 id="dev-title">Development sign-in</h2>
      <p className="muted">Signs a short-lived token with the mesh&apos;s development key. Not for production.</p>
      {/* Each control sits inside its label, which names it. */}
      <label className="field">
        <span>User</span>
        <input name="user" value={user} onChange={(e) => setUser(e.target.value)} autoComplete="username" required maxLength={256} />
      </label>
      <label className="field">
        <span>Segment</span>
        <select name="segment" value={segment} onChange={(e) => setSegment(e.target.value as SegmentName)}>
          {SEGMENTS.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </label>
      <label className="field field-check">
        <input name="operator" type="checkbox" checked={operator} onChange={(e) => setOperator(e.target.checked)} />
        <span>Operator role</span>
      </label>
      {error ? (
        <p className="error" role="alert" data-testid="signin-error">
          {error}
        </p>
      ) : null}
      <button type="submit" className="button" disabled={busy}>
        Sign in
      </button>
    </form>
  );
}

export function SignIn({ error }: { error: string | null }) {
  const config = useConfig();
  const session = useSession();
  return (
    <section className="signin" aria-labelledby="signin-title">
      <h1 id="signin-title">Sign in</h1>
      {error ? (
        <p className="error" role="alert" data-testid="signin-error">
          {error}
        </p>
      ) : null}
      {session ? (
        <p className="muted">
          You&apos;re signed in as <strong>{session.user}</strong>. Signing in again replaces that session.
        </p>
      ) : null}
      {config.status === "loading" ? <p className="muted">Loading…</p> : null}
      {config.status === "error" ? (
        <p className="error" role="alert">
          {config.message}
        </p>
      ) : null}
      {config.status === "ready" && config.config.oidc ? (
        <div className="panel">
          <h2>Your organisation&apos;s account</h2>
          {/* A plain link: the login route answers with a redirect to the identity provider. */}
          <a className="button" href={config.config.oidc.loginUrl} data-testid="oidc-signin">
            Sign in with single sign-on
          </a>
        </div>
      ) : null}
      {config.status === "ready" && config.config.devSignIn ? <DevSignIn /> : null}
      {config.status === "ready" && !config.config.devSignIn && !config.config.oidc ? (
        <p className="error" role="alert">
          No sign-in method is configured. Set TIERMESH_OIDC_ISSUER and TIERMESH_OIDC_CLIENT_ID (or, in development,
          TIERMESH_DEV_KEY_FILE) on the app&apos;s server.
        </p>
      ) : null}
    </section>
  );
}
