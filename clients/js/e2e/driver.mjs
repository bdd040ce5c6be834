#!/usr/bin/env node
/**
 * Browser driver for the end-to-end test `tests/tests/client_js.rs`.
 *
 * It bundles e2e/page.ts (which runs examples/basic.ts) against the BUILT
 * package (dist/, what npm would ship), serves it on 127.0.0.1:E2E_PAGE_PORT,
 * starts Debian's headless Chromium through playwright-core (no browser
 * download) with the Auth.js session cookie set for 127.0.0.1, then answers
 * commands from the Rust test, one JSON object per line on stdin, with one
 * JSON line on stdout each:
 *
 *   {"cmd":"open"}                    load the page (connects)
 *   {"cmd":"open","org":…,"cookie":…} the same for another organization and/or with another
 *                                     session cookie (`name=value`; null: none)
 *   {"cmd":"away"}                    navigate to a blank page of the same origin (the stream ends)
 *   {"cmd":"reload"}                  reload the page
 *   {"cmd":"state"}                   → {"ok":true,"result":{state, states, currentUrl, connectionId,
 *                                        lastEventId, seen, resyncs, events, control}}
 *   {"cmd":"changeChannels","channels":[…]}
 *   {"cmd":"close"}                   client.close()
 *   {"cmd":"quit"}                    close the browser and exit 0
 *
 * The Rust side owns the services and the assertions; this script only drives
 * and reports. The line protocol, the Chromium and the cookie are
 * protocol.mjs's, shared with browse.mjs: first line out
 * {"ready":true,"origin":…}; failures are {"ok":false,"error":…}; it exits
 * when stdin closes, so it never outlives the test. Settings (env): E2E_PAGE_PORT, E2E_GATEWAYS (comma-separated base
 * URLs), E2E_ORG, E2E_COOKIE (`name=value`), CHROMIUM (default /usr/bin/chromium).
 */

import { existsSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

import { launchChromium, logPage, serveCommands, setCookie, setting as required } from "./protocol.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const setting = (name) => required("driver", name);

const port = Number(setting("E2E_PAGE_PORT"));
const gateways = setting("E2E_GATEWAYS");
const org = setting("E2E_ORG");
const cookie = setting("E2E_COOKIE");
const origin = `http://127.0.0.1:${port}`;

const dist = join(root, "dist/index.js");
if (!existsSync(dist)) {
  process.stderr.write(`e2e driver: ${dist} is missing; run \`npm run build\` in clients/js (make test-js does)\n`);
  process.exit(2);
}

const bundle = await build({
  entryPoints: [join(root, "e2e/page.ts")],
  bundle: true,
  format: "esm",
  target: "es2020",
  write: false,
  alias: { "@oikion/realtime": dist },
  logLevel: "error",
});
const script = bundle.outputFiles[0].text;

const server = createServer((req, res) => {
  const path = new URL(req.url ?? "/", origin).pathname;
  if (path === "/page.js") {
    res.writeHead(200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-store" });
    res.end(script);
  } else if (path === "/") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end('<!doctype html><title>realtime e2e</title><script type="module" src="/page.js"></script>');
  } else if (path === "/blank") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end("<!doctype html><title>away</title>");
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(port, "127.0.0.1", resolve);
});

const browser = await launchChromium("driver");
const context = await browser.newContext();
await setCookie(context, cookie, "127.0.0.1");
const page = await context.newPage();
logPage(page);

// The client's control requests (PUT/DELETE /api/realtime/stream) as the
// browser sent them and the gateway answered (preflights are not listed).
const control = [];
const isControl = (request) => ["PUT", "DELETE"].includes(request.method());
page.on("response", (response) => {
  const request = response.request();
  if (isControl(request)) control.push({ method: request.method(), url: request.url(), status: response.status() });
});
page.on("requestfailed", (request) => {
  if (isControl(request)) {
    control.push({ method: request.method(), url: request.url(), failure: request.failure()?.errorText ?? "failed" });
  }
});

const pageUrl = (forOrg = org) => `${origin}/?${new URLSearchParams({ gateways, org: forOrg })}`;

async function waitForProbe() {
  await page.waitForFunction(() => "realtimeProbe" in window, undefined, { timeout: 15_000 });
}

const commands = {
  async open(request) {
    if ("cookie" in request) await setCookie(context, request.cookie, "127.0.0.1");
    await page.goto(pageUrl(request.org ?? org));
    await waitForProbe();
  },
  async away() {
    await page.goto(`${origin}/blank`);
  },
  async reload() {
    await page.reload();
    await waitForProbe();
  },
  async state() {
    const snapshot = await page.evaluate(() => window.realtimeProbe?.snapshot() ?? null);
    return { ...snapshot, control };
  },
  async changeChannels({ channels }) {
    await page.evaluate((c) => window.realtimeProbe.client.changeChannels(c), channels);
  },
  async close() {
    await page.evaluate(() => window.realtimeProbe.client.close());
  },
};

await serveCommands(commands, { origin }, async () => {
  await browser.close();
  server.close();
});
