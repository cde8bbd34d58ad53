// Every page passes an axe-core scan with no serious or critical violation; the chat works by
// keyboard alone, at 375 px wide, and with reduced motion.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  WEB,
  assertAccessible,
  freshUser,
  lastAnswer,
  newPage,
  settled,
  shot,
  signIn,
  useBrowser,
} from "./lib.mjs";

const browser = useBrowser();

test("sign-in, chat and operations pages have no serious or critical violations", async () => {
  const page = await newPage(browser.browser);
  await page.goto(`${WEB}/signin`);
  await assertAccessible(page, "sign-in");
  await signIn(page, { user: freshUser("a11y"), segment: "enterprise", operator: true });
  await assertAccessible(page, "empty chat");
  const composer = page.getByTestId("composer");
  await composer.fill("como pago com pix?");
  await composer.press("Enter");
  assert.equal(await settled(page), "done");
  await lastAnswer(page).getByTestId("decision").locator("summary").click();
  await assertAccessible(page, "chat with an answer");
  await page.goto(`${WEB}/ops`);
  await page.getByTestId("ops").waitFor();
  await page.getByTestId("model-row").first().waitFor();
  await assertAccessible(page, "operations");
  assert.deepEqual(page.problems, []);
});

test("by keyboard alone, at 375 px, with reduced motion", async () => {
  const page = await newPage(browser.browser, { width: 375, height: 760, reducedMotion: "reduce" });
  await page.goto(`${WEB}/signin`);
  // Sign in with the keyboard: Tab to each control, type, Enter.
  await page.keyboard.press("Tab");
  let guard = 0;
  while ((await page.evaluate(() => document.activeElement?.id || document.activeElement?.tagName)) !== "INPUT") {
    await page.keyboard.press("Tab");
    if (++guard > 20) throw new Error("the user field is not reachable by Tab");
  }
  await page.keyboard.press("ControlOrMeta+A");
  await page.keyboard.type(freshUser("keys"));
  await page.keyboard.press("Enter");
  await page.waitForURL(`${WEB}/`);
  const composer = page.getByTestId("composer");
  await composer.waitFor();
  // Focus lands where a person would type, or one Tab away from it; focus is visible.
  for (guard = 0; !(await composer.evaluate((el) => el === document.activeElement)); guard++) {
    await page.keyboard.press("Tab");
    if (guard > 30) throw new Error("the composer is not reachable by Tab");
  }
  const outline = await composer.evaluate((el) => {
    const style = getComputedStyle(el);
    return { style: style.outlineStyle, width: parseFloat(style.outlineWidth), shadow: style.boxShadow };
  });
  assert.ok(
    (outline.style !== "none" && outline.width > 0) || outline.shadow !== "none",
    `the focused composer shows focus: ${JSON.stringify(outline)}`,
  );
  await page.keyboard.type("first line");
  await page.keyboard.press("Shift+Enter");
  await page.keyboard.type("second line");
  assert.equal(await composer.inputValue(), "first line\nsecond line", "Shift+Enter is a new line");
  await page.keyboard.press("Enter");
  assert.equal(await settled(page), "done");
  assert.equal(await composer.inputValue(), "", "Enter sent it");
  await shot(page, "narrow-375");
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 375, `the page scrolls sideways at 375 px (${width} px wide)`);
  const moving = await page.evaluate(() =>
    [...document.querySelectorAll("*")]
      .map((el) => getComputedStyle(el))
      .filter((s) => s.animationName !== "none" && parseFloat(s.animationDuration) > 0.01)
      .map((s) => s.animationName),
  );
  assert.deepEqual(moving, [], "nothing animates when the user asks for reduced motion");
  assert.notEqual(await page.evaluate(() => getComputedStyle(document.documentElement).scrollBehavior), "smooth");
  assert.deepEqual(page.problems, []);
});
