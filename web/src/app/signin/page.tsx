import type { Metadata } from "next";

import { SignIn } from "@/components/SignIn";
import { signInErrorMessage } from "@/lib/signinErrors";

export const metadata: Metadata = { title: "Sign in" };

export default async function SignInPage({ searchParams }: { searchParams: Promise<Record<string, string | string[] | undefined>> }) {
  const { error } = await searchParams;
  return <SignIn error={signInErrorMessage(typeof error === "string" ? error : null)} />;
}
