// Drives the local cluster's demo page in Debian's headless Chromium, as a
// person would: pick an organization and a user, sign in and connect, click
// "Create property", then the new row's "update" and "delete", then "Create
// property" once more (that one stays, for the screenshot), and wait for
// each change's event to appear in the page's live list (it arrives over the
// page's EventSource, through nginx, from a gateway). Takes a screenshot.
//
//   node demo-page.mjs --url http://127.0.0.1:8080/ --screenshot out.png \
//        [--org org_acme] [--user user_alice] [--timeout-ms 20000]
//
// Chromium: $CHROMIUM, else /usr/bin/chromium (playwright-core never
// downloads a browser). Prints one JSON line {"ok":true,…} and exits 0, or
// prints the failure (with the page's console errors) on stderr and exits 1;
// the screenshot is taken in both cases. Run by tests/tests/local_cluster.rs.

import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

function parseArgs(argv) {
  const args = { org: "org_acme", user: "user_alice", timeoutMs: 20000 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (!key.startsWith("--") || value === undefined) {
      throw new Error(`usage: demo-page.mjs --url URL --screenshot PATH [--org ID] [--user ID]; bad argument ${key}`);
    }
    const name = key.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    args[name] = name === "timeoutMs" ? Number(value) : value;
  }
  if (!args.url || !args.screenshot) throw new Error("--url and --screenshot are required");
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`Chromium not found at ${executablePath}: install Debian's chromium (apt-get install chromium) or set CHROMIUM`);
  }
  const problems = [];
  const browser = await chromium.launch({ executablePath, headless: true, timeout: 60000 });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.setDefaultTimeout(args.timeoutMs);
    page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
    try {
      const result = await drive(page, args);
      await page.screenshot({ path: args.screenshot, fullPage: true });
      if (problems.length > 0) throw new Error(`the page reported errors:\n${problems.join("\n")}`);
      process.stdout.write(`${JSON.stringify({ ok: true, ...result })}\n`);
    } catch (e) {
      await page.screenshot({ path: args.screenshot, fullPage: true }).catch(() => {});
      const state = await page.locator("#state").textContent({ timeout: 1000 }).catch(() => "?");
      const detail = await page.locator("#state-detail").textContent({ timeout: 1000 }).catch(() => "?");
      const message = await page.locator("#message").textContent({ timeout: 1000 }).catch(() => "?");
      throw new Error(`${e.message}\npage state: ${state} / ${detail}\npage message: ${message}` +
        (problems.length ? `\n${problems.join("\n")}` : ""));
    }
  } finally {
    await browser.close();
  }
}

/** One event row of the live list, by its data attributes. */
function eventRow(page, operation, propertyId) {
  return page.locator(
    `#events li[data-type="property.update"][data-operation="${operation}"][data-property-id="${propertyId}"]`);
}

async function drive(page, args) {
  const response = await page.goto(args.url, { waitUntil: "load" });
  if (!response || !response.ok()) throw new Error(`GET ${args.url}: ${response ? response.status() : "no response"}`);
  await page.locator('#org[data-loaded="true"]').waitFor();
  await page.selectOption("#org", args.org);
  await page.selectOption("#user", args.user);
  await page.click("#connect");
  await page.locator('#state[data-state="open"]').waitFor();
  const connected = (await page.locator("#state-text").textContent()).trim();
  if (!connected.includes(args.user)) throw new Error(`connected as someone else: ${connected}`);

  // Create: the event must show up in the live list and the row in the table.
  await page.click("#create");
  await page.locator("#message[data-last-property-id]").waitFor();
  const propertyId = await page.locator("#message").getAttribute("data-last-property-id");
  await eventRow(page, "create", propertyId).waitFor();
  const row = page.locator(`#properties tr[data-property-id="${propertyId}"]`);
  await row.waitFor();

  // Update, then delete, with the row's own buttons.
  await row.getByRole("button", { name: "update" }).click();
  await eventRow(page, "update", propertyId).waitFor();
  const updated = (await eventRow(page, "update", propertyId).textContent()).trim();
  if (!updated.includes("price") || !updated.includes("status")) {
    throw new Error(`the update event does not list price and status: ${updated}`);
  }
  await page.locator(`#properties tr[data-property-id="${propertyId}"]`).getByRole("button", { name: "delete" }).click();
  await eventRow(page, "delete", propertyId).waitFor();
  await row.waitFor({ state: "detached" });

  // One more that stays, so the screenshot shows a live-added row too.
  await page.click("#create");
  await page.locator(`#message[data-last-property-id]:not([data-last-property-id="${propertyId}"])`).waitFor();
  const keptPropertyId = await page.locator("#message").getAttribute("data-last-property-id");
  await eventRow(page, "create", keptPropertyId).waitFor();
  await page.locator(`#properties tr[data-property-id="${keptPropertyId}"]`).waitFor();

  const events = await page.locator("#events li[data-type]").evaluateAll((items) =>
    items.map((li) => ({ type: li.dataset.type, id: li.dataset.id, operation: li.dataset.operation,
                         propertyId: li.dataset.propertyId })));
  return { connected, propertyId, keptPropertyId, events };
}

main().catch((e) => {
  process.stderr.write(`demo-page: ${e.stack || e.message}\n`);
  process.exit(1);
});
