#!/usr/bin/env node
/**
 * `publish()` from Node, as a server would call it, for the Rust test
 * `tests/tests/client_js.rs`: imports the BUILT package's `./server` entry
 * (resolved through package.json `exports`, as an app would), publishes the
 * event given as JSON in argv[2] to E2E_GATEWAY with the key E2E_PUBLISH_KEY,
 * and prints the result as one JSON line. Exit 0 whatever the result; 2 on
 * misuse.
 */

import { publish } from "@oikion/realtime/server";

const [url, key, event] = [process.env.E2E_GATEWAY, process.env.E2E_PUBLISH_KEY, process.argv[2]];
if (!url || !key || !event) {
  process.stderr.write("usage: E2E_GATEWAY=… E2E_PUBLISH_KEY=… node e2e/publish.mjs '<event JSON>'\n");
  process.exit(2);
}
const result = await publish({ url, key, signal: AbortSignal.timeout(20_000) }, JSON.parse(event));
process.stdout.write(`${JSON.stringify(result)}\n`);
