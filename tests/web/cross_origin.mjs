// Cross-site WebSocket hijacking and DNS rebinding in a real browser
// (issue 15, finding 2), for tests/cross_site.rs: Debian's chromium,
// headless, through playwright-core, against a gateway on 127.0.0.1 that
// runs with --auth none (loopback, where a local user's browser reaches it).
//
//   env GATEWAY_PORT (the gateway's port on 127.0.0.1), CHROMIUM (binary).
//   -> {"foreign": {...}, "rebound": {...}, "own": {...}}   one JSON line
//
// 1. foreign: a page from another origin (this script's own server on
//    127.0.0.2) opens new WebSocket("ws://127.0.0.1:<port>/") and, if it
//    gets in, does what a hijacker would: connect as operator.admin and
//    read presence. It reports whether it opened, what frames it got, and
//    the close code.
// 2. rebound: chromium resolves evil.test to 127.0.0.1 (the end state of a
//    DNS rebinding); the status of http://evil.test:<port>/, and of the
//    fetch("/metrics") a script of that page makes.
// 3. own: the gateway's Instances page, from the gateway itself, connects.
//
// Any failed step exits 1 with the reason on stderr.

import { chromium } from "playwright-core";
import http from "node:http";

const PORT = Number(process.env.GATEWAY_PORT);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const GATEWAY = `127.0.0.1:${PORT}`;

function fail(why) {
  process.stderr.write(`cross-origin test: ${why}\n`);
  process.exit(1);
}

// The attacker's page. `window.outcome` settles when the socket closes.
const attack = `<!doctype html><meta charset="utf-8"><title>elsewhere</title><script>
window.outcome = new Promise((resolve) => {
  const r = { origin: location.origin, opened: false, frames: [], hello: false, presence: null, closeCode: null };
  const ws = new WebSocket("ws://${GATEWAY}/");
  ws.onopen = () => { r.opened = true; };
  ws.onmessage = (m) => {
    r.frames.push(String(m.data).slice(0, 300));
    let f;
    try { f = JSON.parse(m.data); } catch { return; }
    if (f.type === "event" && f.event === "connect.challenge") {
      ws.send(JSON.stringify({ type: "req", id: "c", method: "connect", params: {
        minProtocol: 3, maxProtocol: 4,
        client: { id: "cli", version: "1.0.0", platform: "web", mode: "cli" },
        role: "operator", scopes: ["operator.admin"] } }));
    } else if (f.type === "res" && f.id === "c") {
      r.hello = f.ok;
      if (f.ok) ws.send(JSON.stringify({ type: "req", id: "p", method: "system-presence", params: {} }));
      else ws.close();
    } else if (f.type === "res" && f.id === "p") {
      r.presence = f.ok ? f.payload : f.error;
      ws.close();
    }
  };
  ws.onclose = (e) => { r.closeCode = e.code; resolve(r); };
});
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(attack);
});
await new Promise((ok, err) => {
  server.once("error", err);
  server.listen(0, "127.0.0.2", ok);
});
const foreignUrl = `http://127.0.0.2:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP evil.test 127.0.0.1"],
});
try {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();

  // 1. The page from another origin.
  await page.goto(foreignUrl);
  const foreign = await page.evaluate(() => Promise.race([
    window.outcome,
    new Promise((_, no) => setTimeout(() => no(new Error("the socket neither failed nor closed in 20 s")), 20000)),
  ]));

  // 2. The gateway under a rebound name.
  const r = await page.goto(`http://evil.test:${PORT}/`);
  if (!r) fail("no response for http://evil.test/");
  // What the rebound page's script reads next, same-origin to it.
  const rebound = {
    page: r.status(),
    metrics: await page.evaluate(() => fetch("/metrics").then((m) => m.status)),
  };

  // 3. The gateway's own page.
  await page.goto(`http://${GATEWAY}/`);
  await page.waitForFunction(
    () => document.querySelector("#conn") && /live/.test(document.querySelector("#conn").textContent) &&
      document.querySelector('#rows tr[data-mode="gateway"]'),
    null, { timeout: 20000 },
  ).catch(async () => fail(`the Instances page did not connect: ${await page.content()}`));
  const own = {
    conn: (await page.$eval("#conn", (e) => e.textContent)).trim(),
    modes: await page.$$eval("#rows tr", (trs) => trs.map((tr) => tr.dataset.mode)),
  };
  process.stdout.write(JSON.stringify({ foreign, rebound, own }) + "\n");
  await ctx.close();
} finally {
  await browser.close();
  server.close();
}
process.exit(0);
