// Markdown in answers is rendered, HTML from the model never is: the simulator quotes the
// question back, so a question full of markup is an answer full of it.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("the model's HTML is shown as text and never runs", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("markup") });
  await send(
    page,
    '**bold** <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> [go](javascript:window.__pwned=3)',
  );
  assert.equal(await settled(page), "done");
  const text = lastAnswer(page).getByTestId("answer-text");
  assert.equal(await text.locator("img, script, iframe, object, embed").count(), 0);
  assert.equal(await text.locator("strong").first().textContent(), "bold");
  assert.match((await text.textContent()) ?? "", /<img src=x/);
  for (const href of await text.locator("a").evaluateAll((as) => as.map((a) => a.getAttribute("href") ?? ""))) {
    assert.doesNotMatch(href, /^\s*javascript:/i);
  }
  const links = text.locator("a");
  if ((await links.count()) > 0) await links.first().click({ trial: true });
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await shot(page, "safe-markdown");
  assert.deepEqual(page.problems, []);
});
