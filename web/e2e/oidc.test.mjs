// Production sign-in: the app's own production build, configured for an OpenID Connect provider
// and without the development key, signs a person in with the Authorization Code flow and PKCE.
// The provider is a small one started here (the only stand-in: no identity provider runs on this
// machine); it checks the PKCE verifier and the redirect URI as a real one does.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { EDGE, newPage, shot, useBrowser } from "./lib.mjs";

const browser = useBrowser();
const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", ".next", "standalone", "server.js");
const CLIENT_ID = "tiermesh-web";

const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
const token = (claims) => `${b64({ alg: "ES256", typ: "JWT", kid: "provider" })}.${b64(claims)}.c2lnbmF0dXJl`;

function provider() {
  const codes = new Map();
  const seen = { exchanges: 0, refused: 0 };
  const server = createServer((req, res) => {
    const issuer = `http://127.0.0.1:${server.address().port}`;
    const url = new URL(req.url, issuer);
    const json = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === "/.well-known/openid-configuration") {
      return json(200, { issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: `${issuer}/token` });
    }
    if (url.pathname === "/authorize") {
      const p = url.searchParams;
      assert.equal(p.get("response_type"), "code");
      assert.equal(p.get("code_challenge_method"), "S256");
      const code = randomBytes(12).toString("hex");
      codes.set(code, { challenge: p.get("code_challenge"), redirect: p.get("redirect_uri"), nonce: p.get("nonce") });
      const back = new URL(p.get("redirect_uri"));
      back.searchParams.set("code", code);
      back.searchParams.set("state", p.get("state"));
      res.writeHead(302, { location: back.toString() });
      return res.end();
    }
    if (url.pathname === "/token" && req.method === "POST") {
      let body = "";
      req.on("data", (chunk) => (body += chunk));
      req.on("end", () => {
        const p = new URLSearchParams(body);
        const grant = codes.get(p.get("code"));
        codes.delete(p.get("code")); // a code is good once
        const verifier = p.get("code_verifier") ?? "";
        const ok =
          grant &&
          p.get("client_id") === CLIENT_ID &&
          p.get("redirect_uri") === grant.redirect &&
          createHash("sha256").update(verifier).digest("base64url") === grant.challenge;
        if (!ok) {
          seen.refused += 1;
          return json(400, { error: "invalid_grant" });
        }
        seen.exchanges += 1;
        const now = Math.floor(Date.now() / 1000);
        const claims = { iss: issuer, aud: CLIENT_ID, sub: "olga@example.com", segment: "vip", role: "operator" };
        return json(200, {
          id_token: token({ ...claims, iat: now, exp: now + 600, nonce: grant.nonce }),
          access_token: token({ ...claims, aud: "tiermesh", iat: now, exp: now + 600 }),
          token_type: "Bearer",
          expires_in: 600,
        });
      });
      return;
    }
    json(404, { error: "not_found" });
  });
  return { server, seen };
}

async function freePort() {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const { port } = probe.address();
  probe.close();
  return port;
}

const idp = provider();
let app;
let web;

before(async () => {
  idp.server.listen(0, "127.0.0.1");
  await once(idp.server, "listening");
  const port = await freePort();
  web = `http://127.0.0.1:${port}`;
  const env = { ...process.env, HOSTNAME: "127.0.0.1", PORT: String(port), NODE_ENV: "production" };
  delete env.TIERMESH_DEV_KEY_FILE;
  delete env.TIERMESH_DEV_JWKS_FILE;
  Object.assign(env, {
    TIERMESH_EDGE_URL: EDGE,
    TIERMESH_OIDC_ISSUER: `http://127.0.0.1:${idp.server.address().port}`,
    TIERMESH_OIDC_CLIENT_ID: CLIENT_ID,
  });
  app = spawn(process.execPath, [SERVER], { env, stdio: "ignore" });
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${web}/api/health`)).ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error("the app did not start");
});

after(() => {
  app?.kill();
  idp.server.close();
});

test("without the development key there is no token minting, only single sign-on", async () => {
  const minted = await fetch(`${web}/api/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: "mallory", segment: "enterprise", operator: true }),
  });
  assert.equal(minted.status, 404);
  const config = await (await fetch(`${web}/api/config`)).json();
  assert.equal(config.devSignIn, false);
  assert.ok(config.oidc?.loginUrl);
});

test("signing in with the provider gives the browser the provider's token", async () => {
  const page = await newPage(browser.browser);
  await page.goto(`${web}/signin`);
  assert.equal(await page.getByTestId("dev-signin").count(), 0, "no development form in production");
  await shot(page, "oidc-signin");
  await page.getByTestId("oidc-signin").click();
  await page.waitForURL(`${web}/`);
  await page.getByTestId("composer").waitFor();
  const session = await page.evaluate(() => JSON.parse(sessionStorage.getItem("tiermesh.session") ?? "null"));
  assert.equal(session.user, "olga@example.com");
  assert.equal(session.segment, "vip");
  assert.equal(session.operator, true);
  const claims = JSON.parse(Buffer.from(session.token.split(".")[1], "base64url").toString());
  assert.equal(claims.sub, "olga@example.com");
  assert.equal(idp.seen.exchanges, 1);
  const header = (await page.locator("header").innerText()) ?? "";
  assert.match(header, /olga@example\.com/);
  await shot(page, "oidc-signed-in");
  // The flow's cookie was for one use: a callback that did not start here is refused.
  await page.goto(`${web}/api/auth/callback?code=forged&state=forged`);
  await page.waitForURL(/\/signin/);
  assert.ok(await page.getByTestId("signin-error").isVisible());
  assert.equal(idp.seen.exchanges, 1, "a forged callback never reaches the provider's token endpoint");
  assert.deepEqual(page.problems, []);
});
