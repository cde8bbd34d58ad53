// Errors a person understands: a spent budget, a token the edge refuses, a session that expired.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("a spent monthly budget is said in words", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: process.env.TIERMESH_BROKE_USER });
  await send(page, "oi, tudo bem?");
  assert.equal(await settled(page, ["done", "error"]), "error");
  const alert = lastAnswer(page).getByTestId("error");
  const message = (await alert.textContent()) ?? "";
  assert.match(message, /Your monthly budget is spent/);
  assert.match(message, /monthly budget spent: \$0\.0+ of \$0\.0+ this month/);
  assert.doesNotMatch(message, /Try again in/, "not mistaken for the rate limit");
  await shot(page, "budget-spent");
  assert.deepEqual(page.problems, []);
});

test("a token the edge refuses asks the person to sign in again", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("refused") });
  await page.evaluate(() => {
    const session = JSON.parse(sessionStorage.getItem("tiermesh.session"));
    session.token = `${session.token.split(".").slice(0, 2).join(".")}.${"A".repeat(86)}`; // signature broken
    sessionStorage.setItem("tiermesh.session", JSON.stringify(session));
  });
  await page.reload(); // as the app finds the session when the page opens
  await page.getByTestId("composer").waitFor();
  await send(page, "oi, tudo bem?");
  assert.equal(await settled(page, ["done", "error"]), "error");
  const alert = lastAnswer(page).getByTestId("error");
  assert.match((await alert.textContent()) ?? "", /signed out or your session expired/);
  assert.equal(await alert.getAttribute("data-code"), "unauthenticated");
  await alert.getByTestId("signin-link").click();
  await page.waitForURL(/\/signin/);
  assert.deepEqual(page.problems, []);
});

test("an expired session is caught before sending", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("expired") });
  await page.evaluate(() => {
    const session = JSON.parse(sessionStorage.getItem("tiermesh.session"));
    session.expiresAt = Date.now() - 1000;
    sessionStorage.setItem("tiermesh.session", JSON.stringify(session));
  });
  await page.reload(); // as the app finds the session when the page opens
  await page.getByTestId("composer").waitFor();
  await send(page, "oi, tudo bem?");
  const expired = page.getByTestId("session-expired");
  await expired.waitFor();
  assert.match((await expired.textContent()) ?? "", /expired/);
  assert.ok(await expired.getByTestId("signin-link").isVisible());
  await shot(page, "session-expired");
  assert.deepEqual(page.problems, []);
});
