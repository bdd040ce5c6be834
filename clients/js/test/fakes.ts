/**
 * Test doubles for the browser's EventSource and fetch (unit tests only; the
 * end-to-end test in e2e/ runs the real ones in Chromium).
 */

import type { EventSourceLike } from "../src/client.js";

export class FakeEventSource implements EventSourceLike {
  static instances: FakeEventSource[] = [];
  onopen: ((this: never, ev: Event) => unknown) | null = null;
  onmessage: ((this: never, ev: MessageEvent) => unknown) | null = null;
  onerror: ((this: never, ev: Event) => unknown) | null = null;
  closed = false;
  /** 0 CONNECTING, 1 OPEN, 2 CLOSED, as the browser's. */
  readyState = 0;
  readonly url: URL;

  constructor(
    url: string,
    readonly init?: { withCredentials?: boolean },
  ) {
    // Relative URLs (same-origin gateways) resolve against a dummy origin.
    this.url = new URL(url, "http://page.test");
    FakeEventSource.instances.push(this);
  }

  static reset(): void {
    FakeEventSource.instances = [];
  }

  static get last(): FakeEventSource {
    const last = FakeEventSource.instances.at(-1);
    if (!last) throw new Error("no EventSource was created");
    return last;
  }

  static open(): FakeEventSource[] {
    return FakeEventSource.instances.filter((es) => !es.closed);
  }

  /** The server accepted: `open`, then the connection message. */
  accept(connectionId = "c1"): this {
    (this.onopen as ((ev: Event) => void) | null)?.(new Event("open"));
    this.send({
      type: "connection",
      status: "connected",
      timestamp: 1,
      organizationId: this.url.searchParams.get("organizationId"),
      organizationName: "Acme",
      channel: this.url.searchParams.get("channel") ?? "all",
      userId: "u1",
      connectionId,
    });
    return this;
  }

  send(data: unknown, lastEventId = ""): this {
    const event = new MessageEvent("message", { data: JSON.stringify(data), lastEventId });
    (this.onmessage as ((ev: MessageEvent) => void) | null)?.(event);
    return this;
  }

  /** The browser failed the connection (a non-200 answer): readyState CLOSED, then `error`. */
  refuse(): this {
    this.readyState = 2;
    return this.fail();
  }

  /**
   * The gateway's transient refusal: a 200 event stream holding only
   * `retry:` and a comment, then its end (the browser would reconnect).
   */
  refuseTransiently(): this {
    this.readyState = 1;
    (this.onopen as ((ev: Event) => void) | null)?.(new Event("open"));
    this.readyState = 0;
    return this.fail();
  }

  fail(): this {
    (this.onerror as ((ev: Event) => void) | null)?.(new Event("error"));
    return this;
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
}

export interface Request {
  url: string;
  init: RequestInit | undefined;
}

/** A fetch that records requests and answers with `status`. */
export function fakeFetch(status = 204): typeof fetch & { requests: Request[]; status: number } {
  const requests: Request[] = [];
  const f = (async (input: RequestInfo | URL, init?: RequestInit) => {
    requests.push({ url: String(input), init });
    return new Response(null, { status: f.status });
  }) as typeof fetch & { requests: Request[]; status: number };
  f.requests = requests;
  f.status = status;
  return f;
}

/** A minimal in-memory Storage. */
export function memoryStorage(): Storage {
  const map = new Map<string, string>();
  return {
    get length() {
      return map.size;
    },
    clear: () => map.clear(),
    getItem: (k) => map.get(k) ?? null,
    key: (i) => [...map.keys()][i] ?? null,
    removeItem: (k) => void map.delete(k),
    setItem: (k, v) => void map.set(k, String(v)),
  };
}

let seq = 0;

/** A `property.update` event with id `<lsn>-<index>`. */
export function propertyEvent(id: string, propertyId = `p${++seq}`) {
  return {
    id,
    type: "property.update",
    timestamp: 1_700_000_000_000,
    source: "postgres",
    version: "1.0",
    organizationId: "org1",
    payload: { propertyId, organizationId: "org1", operation: "create", changes: { id: propertyId } },
  };
}
