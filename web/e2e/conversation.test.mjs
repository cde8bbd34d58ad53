// The conversation is kept for the session and sent as context on the next turn.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, signIn, simRecord, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("the second turn carries the first as context", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("context") });
  await send(page, "oi, meu nome é Joana");
  assert.equal(await settled(page), "done");
  const firstAnswer = (await lastAnswer(page).getByTestId("answer-text").textContent()) ?? "";
  await send(page, "qual é o meu nome?");
  assert.equal(await settled(page), "done");
  assert.equal(await page.getByTestId("answer").count(), 2);
  const [record] = await simRecord(await lastAnswer(page).getAttribute("data-request-id"));
  const turns = record.messages.filter((m) => m.role !== "system").map((m) => [m.role, m.content]);
  assert.deepEqual(turns[0], ["user", "oi, meu nome é Joana"]);
  assert.equal(turns[1][0], "assistant");
  assert.equal(turns[1][1].trim(), firstAnswer.trim());
  assert.deepEqual(turns.at(-1), ["user", "qual é o meu nome?"]);
  assert.deepEqual(page.problems, []);
});
