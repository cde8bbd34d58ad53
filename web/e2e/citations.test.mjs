// "como pago com pix?": the Pix article is cited before the answer text starts, and the answer's
// [n] markers are links to their citations.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

test("citations arrive before the answer and [n] links resolve to them", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("pix") });
  await page.evaluate(() => {
    window.__order = [];
    new MutationObserver(() => {
      const answer = [...document.querySelectorAll('[data-testid="answer"]')].at(-1);
      if (!answer) return;
      const cited = answer.querySelectorAll('[data-testid="citation"]').length > 0;
      const text = (answer.querySelector('[data-testid="answer-text"]')?.textContent ?? "").length > 0;
      window.__order.push({ cited, text });
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await send(page, "como pago com pix?");
  assert.equal(await settled(page), "done");
  await shot(page, "citations");

  const order = await page.evaluate(() => window.__order);
  const firstText = order.findIndex((o) => o.text);
  assert.ok(firstText >= 0 && order[firstText].cited, "the citation was on screen before any answer text");

  const answer = lastAnswer(page);
  const citations = answer.getByTestId("citation");
  const titles = await citations.allTextContents();
  assert.match(titles[0], /Pagamento com Pix/);
  const links = answer.getByTestId("cite-link");
  assert.ok((await links.count()) >= 1, "the answer's [n] markers are links");
  for (const link of await links.all()) {
    const href = await link.getAttribute("href");
    assert.match(href ?? "", /^#cite-/);
    const target = page.locator(`[id="${href.slice(1)}"]`);
    assert.equal(await target.count(), 1, `${href} resolves to one citation`);
    assert.equal(await target.getAttribute("data-testid"), "citation");
    assert.match((await link.textContent()) ?? "", /^\[\d+\]$/);
  }
  await links.first().click();
  assert.ok(page.url().includes("#cite-"));
  assert.deepEqual(page.problems, []);
});
