// The operations view: an operator sees spend over time as charts and every deployment with its
// health and breaker state; a standard user is refused, in the page and at the edge.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EDGE, WEB, freshUser, newPage, send, session, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("an operator sees spend charts and breaker states, live", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("ops"), segment: "enterprise", operator: true });
  await send(page, "oi, tudo bem?"); // so the last hour has spend to chart
  assert.equal(await settled(page), "done");
  await page.getByRole("link", { name: "Operations" }).click();
  await page.waitForURL(`${WEB}/ops`);
  const ops = page.getByTestId("ops");
  await ops.waitFor();
  for (const chart of ["chart-tier", "chart-model", "chart-segment", "chart-team"]) {
    const figure = page.getByTestId(chart);
    await figure.locator("svg.recharts-surface").first().waitFor();
    await figure.locator(".recharts-bar-rectangle").first().waitFor({ timeout: 20_000 });
    assert.ok((await figure.locator("figcaption").textContent())?.trim(), `${chart} has a caption`);
  }
  const rows = page.getByTestId("model-row");
  await rows.first().waitFor();
  const deployments = await rows.evaluateAll((trs) => trs.map((tr) => tr.getAttribute("data-deployment")));
  assert.ok(deployments.includes("sim-fast") && deployments.includes("sim-premium"), deployments.join(", "));
  const breakers = await page.getByTestId("breaker").allTextContents();
  assert.equal(breakers.length, deployments.length);
  for (const b of breakers) assert.match(b, /closed|open|half_open/);
  // Refreshed live: the "last updated" time changes without a reload.
  const stamp = page.getByTestId("models-updated");
  const first = await stamp.textContent();
  await page.waitForFunction(
    (before) => document.querySelector('[data-testid="models-updated"]')?.textContent !== before,
    first,
    { timeout: 15_000 },
  );
  await shot(page, "operations");
  assert.deepEqual(page.problems, []);
});

test("a standard user is refused the operations view, and the catalog at the edge", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("notops") });
  assert.equal(await page.getByRole("link", { name: "Operations" }).count(), 0, "no link to a page they cannot use");
  await page.goto(`${WEB}/ops`);
  const refused = page.getByTestId("ops-refused");
  await refused.waitFor();
  assert.match((await refused.textContent()) ?? "", /operator/i);
  assert.equal(await page.getByTestId("models").count(), 0);
  await shot(page, "operations-refused");
  const { token } = await session(page);
  const answer = await page.evaluate(
    async ({ edge, token }) => {
      const resp = await fetch(`${edge}/tiermesh.inference.v1.InferenceService/ListModels`, {
        method: "POST",
        headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${token}` },
        body: new Uint8Array([0, 0, 0, 0, 0]),
      });
      return { status: resp.headers.get("grpc-status"), bytes: (await resp.arrayBuffer()).byteLength };
    },
    { edge: EDGE, token },
  );
  assert.deepEqual(answer, { status: "7", bytes: 0 });
  assert.deepEqual(page.problems, []);
});
