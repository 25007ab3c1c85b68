// Drives Debian's chromium (headless, through playwright-core) against the
// gateway's Instances page for tests/web_ui.rs, which starts the gateway and
// agents and talks to this script over stdin/stdout, one JSON line each way:
//
//   env GATEWAY (http://addr:port), TOKEN, AGENTS (instance ids, comma
//   separated), SCREENSHOT (path of the PNG to write), CHROMIUM (binary).
//   -> {"step":"ready", ...}       both agents and the gateway are listed
//   <- stopped <instance id>       the test stopped that agent
//   -> {"step":"done", ...}        its row shows it left; screenshot saved
//
// Any failed expectation exits 1 with the reason on stderr.

import { chromium } from "playwright-core";
import readline from "node:readline";

const { GATEWAY, TOKEN, AGENTS, SCREENSHOT } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const agents = AGENTS.split(",");
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function fail(why) {
  process.stderr.write(`web test: ${why}\n`);
  process.exit(1);
}

const rowsOf = (page) =>
  page.$$eval("#rows tr", (trs) =>
    trs.map((tr) => ({
      instance: tr.dataset.instance,
      status: tr.dataset.status,
      mode: tr.dataset.mode,
      left: tr.dataset.left === "true",
      cells: [...tr.children].map((td) => td.textContent),
    })));

async function waitRows(page, what, pred, ms = 20000) {
  const end = Date.now() + ms;
  let rows = [];
  while (Date.now() < end) {
    rows = await rowsOf(page);
    if (pred(rows)) return rows;
    await page.waitForTimeout(100);
  }
  fail(`${what} never showed; rows: ${JSON.stringify(rows)}`);
}

// Pixels of the screenshot itself, decoded by the browser: per listed row,
// how many pixels of its status cell are the Active/Idle/Stale dot colours.
async function dotColours(page, png, rects) {
  return page.evaluate(async ({ b64, rects }) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    const near = (d, i, [r, gg, b]) =>
      Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - gg) < 40 && Math.abs(d[i + 2] - b) < 40;
    return rects.map(({ instance, x, y, w, h }) => {
      const d = g.getImageData(x, y, w, h).data;
      const n = { instance, Active: 0, Idle: 0, Stale: 0 };
      for (let i = 0; i < d.length; i += 4) {
        if (near(d, i, [0x1f, 0x9d, 0x55])) n.Active++;
        if (near(d, i, [0xd6, 0x9e, 0x2e])) n.Idle++;
        if (near(d, i, [0xc5, 0x30, 0x30])) n.Stale++;
      }
      return n;
    });
  }, { b64: png.toString("base64"), rects });
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  // 1. Without a token the page asks for one; the form connects.
  const ctx = await browser.newContext({ viewport: { width: 1600, height: 560 }, colorScheme: "light" });
  const page = await ctx.newPage();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  // Chromium logs a blocked inline script or style (Content-Security-Policy)
  // to the console: any such line fails the test.
  const violations = [];
  const watchPolicy = (p) => p.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) violations.push(m.text());
  });
  const checkPolicy = () => {
    if (violations.length) fail(`Content-Security-Policy violations: ${JSON.stringify(violations)}`);
  };
  watchPolicy(page);
  await page.goto(GATEWAY + "/");
  await page.waitForSelector("#auth:not([hidden])", { timeout: 10000 });
  await page.fill("#token", "wrong-token");
  await page.click("#auth button");
  await page.waitForFunction(() => document.querySelector("#auth-error").textContent.includes("mismatch"), null, { timeout: 10000 });
  await page.fill("#token", TOKEN);
  await page.click("#auth button");
  await waitRows(page, "the table after entering the token", (r) => r.length > 0);
  await page.close();

  // 2. The token in the fragment: taken, then removed from the address bar.
  const live = await ctx.newPage();
  live.on("request", (r) => requests.push(r.url()));
  watchPolicy(live);
  await live.goto(`${GATEWAY}/#token=${encodeURIComponent(TOKEN)}`);
  const rows = await waitRows(live, "the gateway and both agents, all Active", (r) =>
    r.some((x) => x.mode === "gateway" && x.status === "Active") &&
    agents.every((a) => r.some((x) => x.instance === a && x.status === "Active" && !x.left)));
  if (live.url().includes("token")) fail(`the token stayed in the URL: ${live.url()}`);
  if (requests.some((u) => u.includes(TOKEN))) fail("the token was sent in a request URL");
  if (rows[0].mode !== "gateway") fail(`the gateway is not first: ${JSON.stringify(rows)}`);
  const counts = await live.$eval("#counts", (e) => e.textContent.replace(/\s+/g, " ").trim());
  checkPolicy();
  emit({ step: "ready", rows, counts });

  // 3. The test stops one agent: its row changes live (no reload).
  const next = await lines.next();
  const stopped = String(next.value || "").replace(/^stopped /, "").trim();
  if (!agents.includes(stopped)) fail(`unexpected command ${JSON.stringify(next.value)}`);
  const after = await waitRows(live, `agent ${stopped} marked as left`, (r) =>
    r.some((x) => x.instance === stopped && x.left && x.cells[8].startsWith("left ")));
  const still = agents.find((a) => a !== stopped);
  const leftCounts = await live.$eval("#counts", (e) => e.textContent.replace(/\s+/g, " ").trim());

  // 4. Search narrows the table; clearing it brings every row back.
  await live.fill("#search", "gateway");
  const searched = await waitRows(live, "search results", (r) => r.every((x) => x.mode === "gateway"));
  await live.fill("#search", "");
  await waitRows(live, "all rows after clearing the search", (r) => r.length === after.length);

  // 5. Clicking a connected agent's row shows its fields and host stats.
  await live.click(`#rows tr[data-instance="${still}"]`);
  await live.waitForFunction(() => /CPUs/.test(document.querySelector("#d-stats").textContent), null, { timeout: 15000 });
  const detail = await live.$eval("#detail", (e) => e.innerText);

  // 6. The screenshot, and its pixels checked against the rows.
  const png = await live.screenshot({ path: SCREENSHOT, fullPage: true });
  const rects = await live.$$eval("#rows tr", (trs) => trs.map((tr) => {
    const r = tr.children[0].getBoundingClientRect();
    return { instance: tr.dataset.instance || tr.dataset.mode, x: Math.floor(r.x), y: Math.floor(r.y), w: Math.ceil(r.width), h: Math.ceil(r.height) };
  }));
  const pixels = await dotColours(live, png, rects);
  for (const p of pixels) {
    const row = after.find((x) => (x.instance || x.mode) === p.instance);
    const filled = row && !row.left;
    if (filled && p.Active < 20) fail(`no green dot in the screenshot for ${p.instance}: ${JSON.stringify(p)}`);
    if (!filled && p.Active > 0) fail(`a left row has a filled green dot: ${JSON.stringify(p)}`);
  }
  checkPolicy();
  emit({ step: "done", rows: after, counts: leftCounts, searched: searched.length, detail, pixels });
  await ctx.close();
} finally {
  await browser.close();
}
process.exit(0);
