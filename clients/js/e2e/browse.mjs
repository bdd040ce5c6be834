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
 * The line protocol, the Chromium and the cookie are protocol.mjs's, shared
 * with driver.mjs: first line out {"ready":true}; failures are
 * {"ok":false,"error":…}; it exits when stdin closes. Settings (env):
 * E2E_URL, E2E_COOKIE, CHROMIUM (default /usr/bin/chromium).
 */

import { launchChromium, logPage, serveCommands, setCookie, setting } from "./protocol.mjs";

const url = setting("browse", "E2E_URL");
const cookie = setting("browse", "E2E_COOKIE");

const browser = await launchChromium("browse");
const context = await browser.newContext();
await setCookie(context, cookie, new URL(url).hostname);
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
logPage(page);
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

await serveCommands(commands, {}, () => browser.close());
