// The official `openai` npm package against tiermesh's OpenAI-compatible API, through the edge,
// with tiermesh API keys. Run by tests/integration/test_api_keys.py, which makes the keys and
// passes them in: TIERMESH_OPENAI_BASE_URL, TIERMESH_API_KEY (live), TIERMESH_REVOKED_KEY and
// TIERMESH_TEAM_KEY (a key of a team allowed TIERMESH_TEAM_PER_MINUTE requests a minute).
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = process.env.TIERMESH_OPENAI_BASE_URL;
const client = (apiKey) => new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const question = [{ role: "user", content: "Olá! Como funciona o frete?" }];

test("an answer, with usage", async () => {
  const completion = await client(process.env.TIERMESH_API_KEY).chat.completions.create({
    model: "auto",
    messages: question,
  });
  assert.ok(completion.choices[0].message.content.length > 0);
  assert.equal(completion.choices[0].finish_reason, "stop");
  assert.ok(completion.usage.completion_tokens > 0);
  assert.equal(completion.usage.total_tokens, completion.usage.prompt_tokens + completion.usage.completion_tokens);
});

test("a stream, chunk by chunk, usage last", async () => {
  const stream = await client(process.env.TIERMESH_API_KEY).chat.completions.create({
    model: "tier-2",
    messages: question,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const texts = chunks.filter((c) => c.choices.length && c.choices[0].delta.content);
  assert.ok(texts.length >= 2, `streamed in ${texts.length} piece(s)`);
  assert.equal(chunks[0].choices[0].delta.role, "assistant");
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.ok(last.usage.completion_tokens > 0);
});

test("a bad request gets OpenAI's error object", async () => {
  await assert.rejects(
    client(process.env.TIERMESH_API_KEY).chat.completions.create({ model: "auto", messages: question, temperature: 7 }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, String(err));
      assert.equal(err.status, 400);
      assert.equal(err.param, "temperature");
      return true;
    },
  );
});

test("a revoked key is refused with 401", async () => {
  await assert.rejects(
    client(process.env.TIERMESH_REVOKED_KEY).chat.completions.create({ model: "auto", messages: question }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, String(err));
      assert.equal(err.status, 401);
      assert.match(err.message, /revoked/);
      return true;
    },
  );
});

test("a rate-limited team gets 429 with retry-after", async () => {
  const team = client(process.env.TIERMESH_TEAM_KEY);
  const allowed = Number(process.env.TIERMESH_TEAM_PER_MINUTE);
  for (let i = 0; i < allowed; i++) await team.models.list();
  await assert.rejects(team.models.list(), (err) => {
    assert.ok(err instanceof OpenAI.RateLimitError, String(err));
    assert.equal(err.status, 429);
    const retryAfter = Number(err.headers.get("retry-after"));
    assert.ok(retryAfter >= 1 && retryAfter <= 60, `retry-after ${retryAfter}`);
    return true;
  });
});
