// What every browser scenario shares: Debian's chromium through playwright-core (never a
// downloaded browser), signing in through the app's own form, sending a message, waiting for
// an answer, screenshots and the accessibility scan. The mesh and the app are started by
// tests/e2e (pytest), which says where everything is in TIERMESH_* variables.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { after, before } from "node:test";

import AxeBuilder from "@axe-core/playwright";
import { chromium } from "playwright-core";

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the browser tests with \`make e2e\``);
  return value;
}

export const WEB = need("TIERMESH_WEB_URL");
export const EDGE = need("TIERMESH_EDGE_URL");
export const SIM = need("TIERMESH_SIM_URL");
export const RESULTS = need("TIERMESH_RESULTS");
export const STANDARD_PER_MINUTE = Number(need("TIERMESH_STANDARD_PER_MINUTE"));

/** A user nobody else in the run is, so rate limits and spend start from zero. */
export function freshUser(prefix) {
  return `${prefix}-${Math.random().toString(36).slice(2, 10)}`;
}

/** One browser for the scenario file, closed after it. */
export function useBrowser() {
  const holder = {};
  before(async () => {
    holder.browser = await chromium.launch({
      executablePath: need("TIERMESH_CHROMIUM"),
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });
  after(async () => {
    await holder.browser?.close();
  });
  return holder;
}

/** A fresh page (its own session storage), optionally narrow or with reduced motion. */
export async function newPage(browser, { width = 1280, height = 900, reducedMotion = "no-preference" } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, reducedMotion });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.problems = problems;
  return page;
}

export async function shot(page, name) {
  mkdirSync(RESULTS, { recursive: true });
  await page.screenshot({ path: path.join(RESULTS, `${name}.png`), fullPage: true });
}

/** Sign in with the development form: the token is minted by the app's server. */
export async function signIn(page, { user, segment = "standard", operator = false }) {
  await page.goto(`${WEB}/signin`);
  await page.getByLabel("User").fill(user);
  await page.getByLabel("Segment").selectOption(segment);
  const role = page.getByLabel("Operator role");
  if (operator) await role.check();
  else await role.uncheck();
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${WEB}/`);
  await page.getByTestId("composer").waitFor();
}

/** The signed-in session as the app keeps it (the token included). */
export async function session(page) {
  return page.evaluate(() => JSON.parse(sessionStorage.getItem("tiermesh.session") ?? "null"));
}

/** Type a message and press Enter, as a person does. */
export async function send(page, text) {
  const composer = page.getByTestId("composer");
  await composer.click();
  await composer.fill(text);
  await composer.press("Enter");
}

export function lastAnswer(page) {
  return page.getByTestId("answer").last();
}

/** Wait until the last answer's state is one of `states`; returns that state. */
export async function settled(page, states = ["done"], timeout = 60_000) {
  const answer = lastAnswer(page);
  await answer.waitFor();
  const handle = await answer.elementHandle();
  await page.waitForFunction(
    ([el, wanted]) => wanted.includes(el.getAttribute("data-state")),
    [handle, states],
    { timeout },
  );
  return answer.getAttribute("data-state");
}

/** What the simulator (the model provider) saw of a request, by the request id. */
export async function simRecord(requestId) {
  const records = await (await fetch(`${SIM}/_sim/requests`)).json();
  return records.filter((r) => r.request_id === requestId);
}

/** axe-core on the page as it is: no serious or critical violation. */
export async function assertAccessible(page, label) {
  const results = await new AxeBuilder({ page }).withTags(["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]).analyze();
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(
    bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`),
    [],
    `${label}: accessibility violations`,
  );
  return results;
}
