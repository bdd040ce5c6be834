import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { type ConnectionState, connect, type RealtimeError, type VisibilitySource } from "../src/index.js";
import { FakeEventSource, propertyEvent } from "./fakes.js";

/** A fetch that answers the stream URL with `status` and `body`, and records every request. */
function probeFetch(status: number, body = "") {
  const requests: { url: string; init: RequestInit | undefined }[] = [];
  const f = (async (input: RequestInfo | URL, init?: RequestInit) => {
    requests.push({ url: String(input), init });
    if (f.fail) throw new TypeError("Failed to fetch");
    const method = init?.method ?? "GET";
    if (method !== "GET") return new Response(null, { status: 204 });
    return new Response(f.status === 204 ? null : f.body, { status: f.status });
  }) as typeof fetch & { requests: typeof requests; status: number; body: string; fail: boolean };
  f.requests = requests;
  f.status = status;
  f.body = body;
  f.fail = false;
  return f;
}

function open(fetch: typeof globalThis.fetch, extra: Record<string, unknown> = {}) {
  const errors: RealtimeError[] = [];
  const states: ConnectionState[] = [];
  const client = connect({
    organizationId: "org1",
    url: ["http://gw1.test", "http://gw2.test"],
    EventSource: FakeEventSource,
    fetch,
    onError: (e) => errors.push(e),
    ...extra,
  });
  client.onStateChange((s) => states.push(s));
  return { client, errors, states };
}

/** Lets the probe's promises settle (fake timers do not run microtasks by themselves). */
async function settle() {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

beforeEach(() => {
  FakeEventSource.reset();
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("401 and 403 are final", () => {
  for (const [status, body] of [
    [401, "invalid or expired session\n"],
    [403, "not a member of this organization\n"],
  ] as const) {
    it(`${status}: one probe, onError with the status and reason, no further request`, async () => {
      const fetch = probeFetch(status, body);
      const { client, errors, states } = open(fetch);
      const other: RealtimeError[] = [];
      client.onError((e) => other.push(e));
      FakeEventSource.last.refuse();
      await settle();
      expect(fetch.requests.map((r) => [r.init?.method ?? "GET", new URL(r.url).pathname])).toEqual([
        ["GET", "/api/realtime/stream"],
      ]);
      // The probe asks what the EventSource asked, with the same credentials.
      expect(fetch.requests[0]?.url).toBe(FakeEventSource.last.url.href);
      expect(fetch.requests[0]?.init?.credentials).toBe("include");
      const expected = { status, message: body.trim(), url: FakeEventSource.last.url.href };
      expect(errors).toEqual([expected]);
      expect(other).toEqual([expected]);
      expect(client.error).toEqual(expected);
      expect(client.state).toBe("closed");
      expect(states.at(-1)).toBe("closed");
      await vi.advanceTimersByTimeAsync(120_000);
      expect(FakeEventSource.instances).toHaveLength(1);
      expect(fetch.requests).toHaveLength(1);
    });
  }

  it("a 401 after a working stream (the session expired) is final too", async () => {
    const fetch = probeFetch(401, "authentication required");
    const { client, errors } = open(fetch);
    FakeEventSource.last.accept().send(propertyEvent("5-0"));
    FakeEventSource.last.fail(); // the stream ends: a normal reconnect
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("5-0");
    FakeEventSource.last.refuse();
    await settle();
    expect(errors.map((e) => e.status)).toEqual([401]);
    expect(client.state).toBe("closed");
  });

  for (const status of [429, 503, 500, 200]) {
    it(`a refused stream whose probe answers ${status} is retried with backoff`, async () => {
      const fetch = probeFetch(status, "retry later");
      const { client, errors } = open(fetch);
      FakeEventSource.last.accept().send(propertyEvent("7-0"));
      FakeEventSource.last.refuse();
      await settle();
      expect(client.state).toBe("reconnecting");
      await vi.advanceTimersByTimeAsync(1_000);
      expect(FakeEventSource.instances).toHaveLength(2);
      expect(FakeEventSource.last.url.origin).toBe("http://gw2.test");
      expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("7-0");
      expect(errors).toEqual([]);
    });
  }

  it("a probe that cannot reach the gateway (network, CORS) is retried", async () => {
    const fetch = probeFetch(401);
    fetch.fail = true;
    const { errors } = open(fetch);
    FakeEventSource.last.refuse();
    await settle();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(errors).toEqual([]);
  });

  it("network errors and ended streams reconnect without a probe", async () => {
    const fetch = probeFetch(401);
    const { errors } = open(fetch);
    FakeEventSource.last.fail();
    await vi.advanceTimersByTimeAsync(1_000);
    FakeEventSource.last.accept();
    FakeEventSource.last.fail();
    await vi.advanceTimersByTimeAsync(1_000);
    expect(FakeEventSource.instances).toHaveLength(3);
    expect(fetch.requests).toEqual([]);
    expect(errors).toEqual([]);
  });

  it("the gateway's transient refusal (200 + retry:, then the end) is retried, never fatal, never `open`", async () => {
    const fetch = probeFetch(401);
    const { client, errors, states } = open(fetch, { retryDelay: 100, maxRetryDelay: 1_000 });
    for (let i = 0; i < 5; i++) {
      FakeEventSource.last.refuseTransiently();
      await vi.advanceTimersByTimeAsync(2_000);
    }
    expect(FakeEventSource.instances).toHaveLength(6);
    expect(fetch.requests).toEqual([]);
    expect(errors).toEqual([]);
    // `open` alone is not a working stream: never reported as open.
    expect(states).not.toContain("open");
    expect(client.state).toBe("reconnecting");
  });

  it("the backoff doubles across transient refusals and restarts with a connection message", async () => {
    vi.spyOn(Math, "random").mockReturnValue(0.999);
    const fetch = probeFetch(204);
    open(fetch, { retryDelay: 100, maxRetryDelay: 10_000 });
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      FakeEventSource.last.refuseTransiently();
      const count = FakeEventSource.instances.length;
      let waited = 0;
      while (FakeEventSource.instances.length === count) {
        await vi.advanceTimersByTimeAsync(10);
        waited += 10;
      }
      delays.push(waited);
    }
    expect(delays).toEqual([100, 200, 400, 800]);
    FakeEventSource.last.accept();
    FakeEventSource.last.fail();
    let waited = 0;
    const count = FakeEventSource.instances.length;
    while (FakeEventSource.instances.length === count) {
      await vi.advanceTimersByTimeAsync(10);
      waited += 10;
    }
    expect(waited).toBe(100);
    vi.restoreAllMocks();
  });
});

/** A `document` whose visibility the test sets. */
function fakeDocument(initial: "visible" | "hidden" = "visible") {
  const listeners = new Set<() => void>();
  const doc: VisibilitySource & { set(v: "visible" | "hidden"): void; listeners: Set<() => void> } = {
    visibilityState: initial,
    addEventListener: (_t, l) => void listeners.add(l),
    removeEventListener: (_t, l) => void listeners.delete(l),
    set(v) {
      (this as { visibilityState: string }).visibilityState = v;
      for (const l of [...listeners]) l();
    },
    listeners,
  };
  return doc;
}

describe("pauseWhenHidden", () => {
  it("drops the stream after the tab is hidden that long, and resumes after the last event when visible", async () => {
    const doc = fakeDocument();
    const fetch = probeFetch(204);
    const { client, states } = open(fetch, { pauseWhenHidden: 5_000, document: doc });
    FakeEventSource.last.accept("c1").send(propertyEvent("9-0"));
    doc.set("hidden");
    await vi.advanceTimersByTimeAsync(4_000);
    expect(FakeEventSource.last.closed).toBe(false);
    doc.set("visible"); // back before the delay: nothing happens
    doc.set("hidden");
    await vi.advanceTimersByTimeAsync(4_999);
    expect(FakeEventSource.last.closed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeEventSource.last.closed).toBe(true);
    expect(client.state).toBe("paused");
    // The gateway is told to free the connection at once.
    expect(fetch.requests.map((r) => [r.init?.method, r.url])).toEqual([
      ["DELETE", "http://gw1.test/api/realtime/stream?connectionId=c1"],
    ]);
    // Nothing reconnects while hidden.
    await vi.advanceTimersByTimeAsync(600_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    doc.set("visible");
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.last.url.origin).toBe("http://gw1.test");
    expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("9-0");
    FakeEventSource.last.accept("c2");
    expect(client.state).toBe("open");
    expect(states).toEqual(["open", "paused", "connecting", "open"]);
  });

  it("defaults to 30 s with `true`, and a tab opened hidden pauses too", async () => {
    const doc = fakeDocument("hidden");
    const { client } = open(probeFetch(204), { pauseWhenHidden: true, document: doc });
    await vi.advanceTimersByTimeAsync(29_999);
    expect(client.state).not.toBe("paused");
    await vi.advanceTimersByTimeAsync(1);
    expect(client.state).toBe("paused");
  });

  it("is off by default and without a document", async () => {
    const doc = fakeDocument();
    open(probeFetch(204), { document: doc });
    expect(doc.listeners.size).toBe(0);
    // Node has no `document`: the option is accepted and does nothing.
    const { client } = open(probeFetch(204), { pauseWhenHidden: 10 });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(client.state).toBe("connecting");
  });

  it("close() stops listening", async () => {
    const doc = fakeDocument();
    const { client } = open(probeFetch(204), { pauseWhenHidden: 10, document: doc });
    expect(doc.listeners.size).toBe(1);
    await client.close();
    expect(doc.listeners.size).toBe(0);
    doc.set("hidden");
    await vi.advanceTimersByTimeAsync(1_000);
    expect(client.state).toBe("closed");
  });
});
