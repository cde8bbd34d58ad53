// Stop mid-stream: the answer stops growing, is marked stopped, and the model provider (the
// simulator) sees the client go away: the cancel reaches the provider call.
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, simRecord, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("the stop button ends the stream and the provider sees the disconnect", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("stopper") });
  await send(page, "me conta uma história bem longa sobre o mar");
  const answer = lastAnswer(page);
  await page.waitForFunction(
    () => ([...document.querySelectorAll('[data-testid="answer-text"]')].at(-1)?.textContent ?? "").length > 40,
  );
  await page.getByTestId("stop").click();
  assert.equal(await settled(page, ["stopped"]), "stopped");
  const requestId = await answer.getAttribute("data-request-id");
  assert.ok(requestId, "the answer knows its request id (from the decision)");
  const kept = (await answer.getByTestId("answer-text").textContent()) ?? "";
  assert.ok(kept.length > 0, "what arrived before the stop stays on screen");
  await shot(page, "stopped");

  let records = [];
  for (let i = 0; i < 50; i++) {
    records = await simRecord(requestId);
    if (records.length && records.every((r) => r.state === "disconnected")) break;
    await sleep(100);
  }
  assert.ok(records.length >= 1, `the simulator saw request ${requestId}`);
  assert.deepEqual(
    records.map((r) => r.state),
    records.map(() => "disconnected"),
    "the provider call was cancelled, not run to its end",
  );
  await sleep(500);
  assert.equal((await answer.getByTestId("answer-text").textContent()) ?? "", kept, "nothing arrives after the stop");
  assert.ok(await page.getByTestId("composer").isEnabled());
  assert.deepEqual(page.problems, []);
});
