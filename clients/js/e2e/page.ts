/**
 * The end-to-end test page: runs the README's example (examples/basic.ts)
 * exactly as an app would, and records what it sees for the driver
 * (e2e/driver.mjs) to read. The log lives in sessionStorage, like the
 * client's resume point, so it spans reloads of the tab.
 */

import type { ConnectionState, PropertyUpdateEvent, RealtimeClient, RealtimeError } from "@oikion/realtime";

import { watchProperties } from "../examples/basic.js";

interface Seen {
  id: string;
  propertyId: string;
  operation: string;
}

interface Probe {
  client: RealtimeClient;
  states: ConnectionState[];
  /** Every property event delivered in this tab, across reloads. */
  seen(): Seen[];
  resyncs(): number;
  snapshot(): unknown;
}

const LOG = "e2e:seen";
const RESYNCS = "e2e:resyncs";
const EVENTS = "e2e:events";
const ERRORS = "e2e:errors";

const params = new URLSearchParams(location.search);
const gateways = (params.get("gateways") ?? "").split(",");
const org = params.get("org") ?? "";

function read<T>(key: string, fallback: T): T {
  const raw = sessionStorage.getItem(key);
  return raw === null ? fallback : (JSON.parse(raw) as T);
}

const states: ConnectionState[] = [];
const client = watchProperties(
  gateways,
  org,
  (event: PropertyUpdateEvent) => {
    const seen = read<Seen[]>(LOG, []);
    seen.push({
      id: event.id,
      propertyId: String(event.payload.propertyId),
      operation: event.payload.operation,
    });
    sessionStorage.setItem(LOG, JSON.stringify(seen));
  },
  () => sessionStorage.setItem(RESYNCS, String(read<number>(RESYNCS, 0) + 1)),
);
client.onStateChange((state) => states.push(state));
// Final refusals (401/403), across reloads.
client.onError((error: RealtimeError) => {
  sessionStorage.setItem(ERRORS, JSON.stringify([...read<RealtimeError[]>(ERRORS, []), error]));
});
// Every event of any type, to see channel changes take effect.
client.onEvent((event) => {
  const events = read<unknown[]>(EVENTS, []);
  const message = (event.payload as { message?: unknown }).message;
  events.push({ type: event.type, id: event.id ?? null, message: message ?? null });
  sessionStorage.setItem(EVENTS, JSON.stringify(events));
});

const probe: Probe = {
  client,
  states,
  seen: () => read<Seen[]>(LOG, []),
  resyncs: () => read<number>(RESYNCS, 0),
  snapshot: () => ({
    state: client.state,
    states,
    currentUrl: client.currentUrl,
    connectionId: client.connectionId ?? null,
    lastEventId: client.lastEventId ?? null,
    seen: probe.seen(),
    resyncs: probe.resyncs(),
    events: read<unknown[]>(EVENTS, []),
    errors: read<unknown[]>(ERRORS, []),
  }),
};
(window as unknown as { realtimeProbe: Probe }).realtimeProbe = probe;
