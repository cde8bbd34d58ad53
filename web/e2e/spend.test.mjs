// The monthly spend in the header is live (WatchSpend through Envoy) and moves after a chat; a
// user can read no one else's: a direct gRPC-Web call with their own token is refused.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EDGE, freshUser, newPage, send, session, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

async function spent(page) {
  return page.getByTestId("spend").getAttribute("data-cost-micro-usd");
}

test("the spend widget moves after a chat, and another user's spend is refused", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("spender") });
  await page.waitForFunction(
    () => document.querySelector('[data-testid="spend"]')?.getAttribute("data-cost-micro-usd") === "0",
  );
  await send(page, "oi! qual é o horário de atendimento?");
  assert.equal(await settled(page), "done");
  await page.waitForFunction(
    () => Number(document.querySelector('[data-testid="spend"]')?.getAttribute("data-cost-micro-usd")) > 0,
    undefined,
    { timeout: 15_000 },
  );
  const cost = Number(await spent(page));
  const sessionCost = Number(await page.getByTestId("session-cost").getAttribute("data-cost-micro-usd"));
  assert.equal(cost, sessionCost, "the month's spend is this session's one answer");
  assert.equal(await page.getByTestId("spend").getAttribute("data-requests"), "1");
  await shot(page, "spend");

  // The same token, asking the edge over gRPC-Web for someone else's spend, from the page.
  const { token } = await session(page);
  const refused = await page.evaluate(
    async ({ edge, token }) => {
      const user = new TextEncoder().encode("someone-else");
      const message = new Uint8Array([0x0a, user.length, ...user]); // WatchSpendRequest.user
      const frame = new Uint8Array([0, 0, 0, 0, message.length, ...message]);
      const resp = await fetch(`${edge}/tiermesh.analytics.v1.AnalyticsService/WatchSpend`, {
        method: "POST",
        headers: {
          "content-type": "application/grpc-web+proto",
          "x-grpc-web": "1",
          authorization: `Bearer ${token}`,
        },
        body: frame,
      });
      const body = new Uint8Array(await resp.arrayBuffer());
      return {
        http: resp.status,
        status: resp.headers.get("grpc-status"),
        message: decodeURIComponent(resp.headers.get("grpc-message") ?? ""),
        bytes: body.length,
      };
    },
    { edge: EDGE, token },
  );
  assert.equal(refused.status, "7", JSON.stringify(refused));
  assert.match(refused.message, /only its own user's spend/);
  assert.equal(refused.bytes, 0, "no totals came back");
  assert.deepEqual(page.problems, []);
});
