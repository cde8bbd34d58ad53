// A standard user says hello in Portuguese: a tier 1 answer streams in, token by token. The
// text must be seen growing over several animation frames while the stream is still open.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("a greeting streams in, visibly, from tier 1", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("ana") });
  await shot(page, "chat-empty");
  // Sample the answer on every animation frame, from before the message is sent.
  await page.evaluate(() => {
    window.__frames = [];
    const sample = () => {
      const answers = document.querySelectorAll('[data-testid="answer"]');
      const answer = answers[answers.length - 1];
      if (answer) {
        const text = answer.querySelector('[data-testid="answer-text"]')?.textContent ?? "";
        window.__frames.push({ state: answer.getAttribute("data-state"), length: text.length });
      }
      if (!answer || answer.getAttribute("data-state") === "streaming" || !answer.getAttribute("data-state")) {
        requestAnimationFrame(sample);
      }
    };
    requestAnimationFrame(sample);
  });
  await send(page, "oi, tudo bem?");
  await page.waitForFunction(() => window.__frames.some((f) => f.state === "streaming" && f.length > 0));
  await shot(page, "chat-streaming");
  assert.equal(await settled(page), "done");
  await shot(page, "chat-done");

  const frames = await page.evaluate(() => window.__frames);
  const streaming = frames.filter((f) => f.state === "streaming");
  const lengths = [...new Set(streaming.map((f) => f.length))].filter((n) => n > 0);
  assert.ok(lengths.length >= 5, `text grew over only ${lengths.length} frames: ${JSON.stringify(lengths)}`);
  assert.deepEqual(lengths, [...lengths].sort((a, b) => a - b), "the text only ever grows while streaming");
  const final = (await lastAnswer(page).getByTestId("answer-text").textContent()) ?? "";
  assert.ok(lengths[0] < final.length / 2, "the first text seen was a small part of the answer, not all of it");
  assert.match(final, /simulated answer from sim-fast/);

  const answer = lastAnswer(page);
  assert.equal((await answer.getByTestId("tier-badge").textContent())?.trim(), "Tier 1");
  assert.ok(Number(await answer.getAttribute("data-first-token-ms")) > 0);
  const meta = (await answer.getByTestId("answer-meta").textContent()) ?? "";
  assert.match(meta, /sim-fast/);
  assert.match(meta, /\$0\.\d+/);
  const total = Number(await page.getByTestId("session-cost").getAttribute("data-cost-micro-usd"));
  assert.ok(total > 0, "the session's running cost counts the answer");
  assert.deepEqual(page.problems, []);
});
