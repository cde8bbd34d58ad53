"use client";
// The header on every page: who is signed in, navigation, live spend, sign out.
import Link from "next/link";
import { usePathname, useRouter } from "next/navigation";

import { SpendWidget } from "@/components/SpendWidget";
import { useConfig } from "@/lib/config";
import { clearConversation } from "@/lib/conversation";
import { clearSession } from "@/lib/session";
import { useSession } from "@/lib/useSession";

export function AppHeader() {
  const session = useSession();
  const config = useConfig();
  const pathname = usePathname();
  const router = useRouter();

  function signOut() {
    clearSession();
    clearConversation();
    router.push("/signin");
  }

  const navLink = (href: string, label: string) => (
    <Link href={href} aria-current={pathname === href ? "page" : undefined}>
      {label}
    </Link>
  );

  return (
    <header className="app-header">
      <div className="header-row">
        <Link href="/" className="brand">
          tiermesh
        </Link>
        <nav aria-label="Main">
          <ul>
            <li>{navLink("/", "Chat")}</li>
            {session?.operator ? <li>{navLink("/ops", "Operations")}</li> : null}
          </ul>
        </nav>
        <div className="who-am-i">
          {session ? (
            <>
              <span className="user" data-testid="user">
                {session.user}
              </span>
              <span className="badge" data-testid="segment">
                {session.segment}
              </span>
              {session.operator ? (
                <span className="badge badge-operator" data-testid="operator-badge">
                  operator
                </span>
              ) : null}
              <button type="button" className="button button-secondary" data-testid="signout" onClick={signOut}>
                Sign out
              </button>
            </>
          ) : session === null && pathname !== "/signin" ? (
            <Link href="/signin" className="button" data-testid="signin-link">
              Sign in
            </Link>
          ) : null}
        </div>
      </div>
      {session && config.status === "ready" ? (
        <div className="header-row header-spend">
          <SpendWidget edgeUrl={config.config.edgeUrl} token={session.token} user={session.user} />
        </div>
      ) : null}
    </header>
  );
}
