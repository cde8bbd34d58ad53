// A vip user asks a long technical question with a code block and a stack trace: the premium
// end of the tiers answers (3 or 4), and the decision's reasons can be opened and read.
import assert from "node:assert/strict";
import { test } from "node:test";

import { freshUser, lastAnswer, newPage, send, settled, shot, signIn, useBrowser } from "./lib.mjs";

const browser = useBrowser();

const QUESTION = `My Python asyncio service deadlocks under load when two coroutines share an asyncpg pool.
Here is the code:

\`\`\`python
async def transfer(pool, a, b, amount):
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, a)
            await notify(pool, b, amount)
\`\`\`

and the stack trace after 30 seconds:

\`\`\`
Traceback (most recent call last):
  File "/srv/app/transfer.py", line 41, in transfer
    await notify(pool, b, amount)
  File "/srv/app/notify.py", line 12, in notify
    async with pool.acquire() as conn:
asyncio.exceptions.TimeoutError: pool exhausted after 30.0 s
\`\`\`

Explain the root cause of the deadlock, how pool sizing interacts with nested acquires, and refactor it
so the transaction never waits on a second connection, with a migration plan for production.`;

test("a long technical question from a vip is answered by tier 3 or 4, with the reasons shown", async () => {
  const page = await newPage(browser.browser);
  await signIn(page, { user: freshUser("vip"), segment: "vip" });
  await send(page, QUESTION);
  assert.equal(await settled(page), "done");
  const answer = lastAnswer(page);
  const tier = (await answer.getByTestId("tier-badge").textContent())?.trim();
  assert.ok(["Tier 3", "Tier 4"].includes(tier), `answered by ${tier}`);
  const decision = answer.getByTestId("decision");
  await decision.locator("summary").click();
  const reasons = await decision.getByTestId("reason").allTextContents();
  assert.ok(reasons.length >= 2, `reasons: ${JSON.stringify(reasons)}`);
  assert.ok(await decision.getByTestId("reason").first().isVisible());
  assert.match(reasons.join(" "), /vip|high-value|complex/i);
  const summary = (await decision.locator("summary").textContent()) ?? "";
  assert.match(summary, /technical/i);
  // The question's code block is shown as code, in the conversation.
  assert.ok((await page.locator("pre code").count()) >= 1);
  await shot(page, "technical-vip");
  assert.deepEqual(page.problems, []);
});
