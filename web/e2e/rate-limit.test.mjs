// A standard user over their per-minute limit is told, in words, how many seconds to wait.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  STANDARD_PER_MINUTE,
  freshUser,
  lastAnswer,
  newPage,
  send,
  settled,
  shot,
  signIn,
  useBrowser,
} from "./lib.mjs";

const browser = useBrowser();

test("the rate limit message says how many seconds to wait", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("hasty") });
  let state = "done";
  let sent = 0;
  // Counted in fixed one-minute windows: a window that turns over mid-test grants the limit again.
  while (state === "done" && sent <= 2 * STANDARD_PER_MINUTE) {
    await send(page, `pergunta rápida número ${sent + 1}`);
    sent += 1;
    state = await settled(page, ["done", "error"]);
  }
  assert.equal(state, "error", `still answered after ${sent} messages`);
  const alert = lastAnswer(page).getByTestId("error");
  assert.equal(await alert.getAttribute("role"), "alert");
  const message = (await alert.textContent()) ?? "";
  const seconds = message.match(/Try again in (\d+) seconds?/);
  assert.ok(seconds, `no wait in: ${message}`);
  assert.ok(Number(seconds[1]) >= 1 && Number(seconds[1]) <= 60, message);
  assert.ok(await lastAnswer(page).getByTestId("retry").isVisible());
  await shot(page, "rate-limited");
  assert.deepEqual(page.problems, []);
});
