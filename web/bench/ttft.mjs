// Time to the first visible token in the browser: sign in, send N chats one after another, and
// read each answer's data-first-token-ms (performance.now() from the Enter key to the first
// delta on screen). Prints one JSON line: {"first_token_ms": [...]}. Run by bench/web_ttft.py.
import { chromium } from "playwright-core";

const [web, chromiumPath, count] = [process.env.TIERMESH_WEB_URL, process.env.TIERMESH_CHROMIUM, Number(process.argv[2] ?? 20)];
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(`${web}/signin`);
  await page.getByLabel("User").fill(`bench-${Date.now()}`);
  await page.getByLabel("Segment").selectOption("enterprise");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${web}/`);
  const composer = page.getByTestId("composer");
  const firsts = [];
  for (let i = 0, n = 1; i < count + 3; i++, n++) {
    await composer.fill(`hello there, chat number ${i} ${Math.random()}`);
    await composer.press("Enter");
    await page.waitForFunction(
      (n) => {
        const answers = document.querySelectorAll('[data-testid="answer"]');
        return answers.length === n && answers[n - 1].getAttribute("data-state") === "done";
      },
      n,
      { timeout: 60_000 },
    );
    const ms = Number(await page.getByTestId("answer").nth(n - 1).getAttribute("data-first-token-ms"));
    if (i >= 3) firsts.push(ms); // the first three warm the page up
    if (n === 10) {
      // a fresh conversation now and then, so the context sent stays short
      await page.getByRole("button", { name: "New chat" }).click();
      n = 0;
    }
  }
  console.log(JSON.stringify({ first_token_ms: firsts }));
} finally {
  await browser.close();
}
