// Drives Debian's chromium (headless, through playwright-core) against the
// Instances page of a gateway with `admission = "manual"`, for
// tests/web_ui.rs: a pending agent is listed with the command that approves
// it, then (once the test approved and labelled it) it leaves the pending
// list and its row shows the label. One JSON line each way:
//
//   env GATEWAY (http://addr:port), TOKEN (operator token), REQUEST (the
//   agent's request id), CHROMIUM (binary).
//   -> {"step":"pending", ...}    the request's row in the pending list
//   <- approved                   the test approved and labelled the device
//   -> {"step":"approved", ...}   the pending list is empty; the row's label
//
// Any failed expectation exits 1 with the reason on stderr.

import { chromium } from "playwright-core";
import readline from "node:readline";

const { GATEWAY, TOKEN, REQUEST } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const emit = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function fail(why) {
  process.stderr.write(`web test: ${why}\n`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const ctx = await browser.newContext({ viewport: { width: 1600, height: 700 } });
  const page = await ctx.newPage();
  const violations = [];
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) violations.push(m.text());
  });
  await page.goto(`${GATEWAY}/#token=${encodeURIComponent(TOKEN)}`);

  // 1. The request, listed with its approve command (polled: within a few s).
  const row = `#pending-rows tr[data-request="${REQUEST}"]`;
  await page.waitForSelector(row, { timeout: 20000 }).catch(() => fail(`no pending row for ${REQUEST}`));
  const listed = await page.$eval(row, (tr) => ({
    device: tr.dataset.device,
    deviceTitle: tr.children[1].title,
    cells: [...tr.children].map((td) => td.textContent),
    // What a client sent is text: no element made of it.
    elements: tr.querySelectorAll("td *").length,
  }));
  const section = await page.$eval("#pending", (e) => ({
    visible: !e.hidden && e.getBoundingClientRect().height > 0,
    count: document.querySelector("#n-pending").textContent,
  }));
  if (violations.length) fail(`Content-Security-Policy violations: ${JSON.stringify(violations)}`);
  emit({ step: "pending", ...listed, section });

  // 2. Approved and labelled by the test: the pending list empties, and the
  //    agent's row shows the label.
  const next = await lines.next();
  if (String(next.value || "").trim() !== "approved") fail(`unexpected command ${JSON.stringify(next.value)}`);
  await page.waitForFunction(() => document.querySelector("#pending").hidden, null, { timeout: 20000 })
    .catch(() => fail("the approved request stayed in the pending list"));
  const labelled = await page.waitForFunction((host) => {
    for (const tr of document.querySelectorAll("#rows tr")) {
      const cell = tr.children[1];
      const label = cell && cell.querySelector(".tag.label");
      if (label && cell.textContent.startsWith(host)) {
        return { host: cell.textContent, label: label.textContent, status: tr.dataset.status,
          elements: label.querySelectorAll("*").length };
      }
    }
    return null;
  }, listed.cells[0], { timeout: 20000 }).catch(() => fail("no labelled row for the approved agent"));
  emit({ step: "approved", row: await labelled.jsonValue() });
  if (violations.length) fail(`Content-Security-Policy violations: ${JSON.stringify(violations)}`);
  await ctx.close();
} finally {
  await browser.close();
}
process.exit(0);
