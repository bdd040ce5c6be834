/**
 * What the two browser drivers (driver.mjs: the client library's page;
 * browse.mjs: a page the test serves itself) share: their settings, the
 * headless Chromium they start, and the line protocol with the Rust test
 * (`tests/src/browser.rs`, `NodeDriver`).
 *
 * The protocol: the driver writes one JSON line when it is ready
 * (`{"ready":true,…}`), then answers each JSON command read from stdin
 * (`{"cmd":…}`) with one JSON line: `{"ok":true,"result":…}` or
 * `{"ok":false,"error":…}`. `{"cmd":"quit"}` is answered, then the driver
 * closes the browser and exits 0; so it does when stdin closes, so that it
 * never outlives the test.
 */

import { existsSync } from "node:fs";
import { createInterface } from "node:readline";

import { chromium } from "playwright-core";

/** The environment variable `name`; exits 2 with one line when it is not set. */
export function setting(driver, name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`e2e ${driver}: ${name} is not set\n`);
    process.exit(2);
  }
  return value;
}

/**
 * Debian's headless Chromium (CHROMIUM, default /usr/bin/chromium) through
 * playwright-core: no browser download. Exits 2 with one line when absent.
 */
export async function launchChromium(driver) {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    process.stderr.write(`e2e ${driver}: no Chromium at ${executablePath}; install Debian's \`chromium\` package\n`);
    process.exit(2);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    // As root Chromium refuses to start sandboxed; the pages are the tests' own.
    args: ["--no-sandbox"],
  });
}

/** Sets the cookie `name=value` (or none, for a falsy value) for `domain`. */
export async function setCookie(context, value, domain) {
  await context.clearCookies();
  if (!value) return;
  const eq = value.indexOf("=");
  await context.addCookies([
    {
      name: value.slice(0, eq),
      value: value.slice(eq + 1),
      domain,
      path: "/",
      httpOnly: true,
      sameSite: "Lax",
    },
  ]);
}

/** Forwards the page's console and errors to stderr (the test's driver log). */
export function logPage(page) {
  page.on("console", (m) => process.stderr.write(`page console.${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`page error: ${e.message}\n`));
}

function reply(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

/**
 * Says `ready` (with `hello`'s fields), then answers commands from stdin
 * with `commands[cmd](request)` until `quit` or the end of stdin; then runs
 * `shutdown` and exits 0.
 */
export async function serveCommands(commands, hello, shutdown) {
  reply({ ready: true, ...hello });
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
  await shutdown().catch(() => {});
  process.exit(0);
}
