#!/usr/bin/env node
/**
 * A bare browser for end-to-end tests of pages the test serves itself
 * (`tests/tests/app_hook.rs`: the original app's hook, unchanged, behind a
 * test-side front origin). Unlike driver.mjs it bundles nothing: it opens
 * E2E_URL in Debian's headless Chromium (through playwright-core, no
 * browser download) with the cookie E2E_COOKIE (`name=value`, for the URL's
 * host) and answers commands from the Rust test, one JSON object per line on
 * stdin, one JSON line on stdout each:
 *
 *   {"cmd":"open"}              load E2E_URL
 *   {"cmd":"eval","expr":"…"}   → {"ok":true,"result":<the expression's value>}
 *   {"cmd":"quit"}              close the browser and exit 0
 *
 * Before any page script runs, every page gets a probe that only counts:
 * `window.__eventSources` = {constructed, closed} (EventSource constructions
 * and close() calls by the page), and the driver counts main-frame
 * navigations (`navigations` in every eval reply's `meta`): a test can so
 * prove that a page recovered by itself, without a reload and without
 * re-creating its EventSource. The probe subclasses EventSource and changes
 * nothing of its behaviour.
 *
 * First line out: {"ready":true}. Failures are {"ok":false,"error":…}. It
 * exits when stdin closes, so it never outlives the test. Settings (env):
 * E2E_URL, E2E_COOKIE, CHROMIUM (default /usr/bin/chromium).
 */

import { existsSync } from "node:fs";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

function setting(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`e2e browse: ${name} is not set\n`);
    process.exit(2);
  }
  return value;
}

const url = setting("E2E_URL");
const cookie = setting("E2E_COOKIE");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
if (!existsSync(executablePath)) {
  process.stderr.write(`e2e browse: no Chromium at ${executablePath}; install Debian's \`chromium\` package\n`);
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // As root Chromium refuses to start sandboxed; the page is the test's own.
  args: ["--no-sandbox"],
});
const context = await browser.newContext();
const eq = cookie.indexOf("=");
await context.addCookies([
  {
    name: cookie.slice(0, eq),
    value: cookie.slice(eq + 1),
    domain: new URL(url).hostname,
    path: "/",
    httpOnly: true,
    sameSite: "Lax",
  },
]);
await context.addInitScript(() => {
  const counts = { constructed: 0, closed: 0 };
  window.__eventSources = counts;
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      counts.constructed += 1;
    }
    close() {
      counts.closed += 1;
      super.close();
    }
  };
});
const page = await context.newPage();
let navigations = 0;
page.on("framenavigated", (frame) => {
  if (frame === page.mainFrame()) navigations += 1;
});
page.on("console", (m) => process.stderr.write(`page console.${m.type()}: ${m.text()}\n`));
page.on("pageerror", (e) => process.stderr.write(`page error: ${e.message}\n`));
page.on("requestfinished", (r) => process.stderr.write(`request finished: ${r.method()} ${r.url()}\n`));
page.on("requestfailed", (r) =>
  process.stderr.write(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText ?? "?"}\n`),
);

const commands = {
  async open() {
    await page.goto(url);
  },
  async eval({ expr }) {
    return { value: await page.evaluate(expr), meta: { navigations } };
  },
};

function reply(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

reply({ ready: true });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch {
    reply({ ok: false, error: `not JSON: ${line}` });
    continue;
  }
  if (request.cmd === "quit") {
    reply({ ok: true });
    break;
  }
  const run = commands[request.cmd];
  if (!run) {
    reply({ ok: false, error: `unknown command ${request.cmd}` });
    continue;
  }
  try {
    reply({ ok: true, result: (await run(request)) ?? null });
  } catch (error) {
    reply({ ok: false, error: String(error?.message ?? error) });
  }
}
// quit, or stdin closed: the test is gone.
await browser.close().catch(() => {});
process.exit(0);
