import type { Metadata } from "next";

import { Ops } from "@/components/Ops";

export const metadata: Metadata = { title: "Operations" };

export default function OpsPage() {
  return <Ops />;
}
