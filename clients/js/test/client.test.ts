import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { type ConnectOptions, type ConnectionState, connect, isAfter, storageKey } from "../src/index.js";
import { FakeEventSource, fakeFetch, memoryStorage, propertyEvent } from "./fakes.js";

function open(options: Partial<ConnectOptions> = {}) {
  const fetch = fakeFetch();
  const client = connect({
    organizationId: "org1",
    url: ["http://gw1.test", "http://gw2.test"],
    EventSource: FakeEventSource,
    fetch,
    ...options,
  });
  return { client, fetch };
}

beforeEach(() => {
  FakeEventSource.reset();
  vi.useFakeTimers();
});

afterEach(() => {
  vi.useRealTimers();
});

describe("connect", () => {
  it("opens the stream URL with the organization, channels and credentials", () => {
    open({ channels: ["property", "organization"] });
    const es = FakeEventSource.last;
    expect(es.url.origin).toBe("http://gw1.test");
    expect(es.url.pathname).toBe("/api/realtime/stream");
    expect(es.url.searchParams.get("organizationId")).toBe("org1");
    expect(es.url.searchParams.get("channel")).toBe("property,organization");
    expect(es.url.searchParams.has("lastEventId")).toBe(false);
    expect(es.init?.withCredentials).toBe(true);
  });

  it("defaults to the page's own origin", () => {
    connect({ organizationId: "o 1", EventSource: FakeEventSource });
    expect(FakeEventSource.last.url.href).toBe("http://page.test/api/realtime/stream?organizationId=o+1");
  });

  it("refuses missing settings with a clear error", () => {
    expect(() => connect({ organizationId: "", EventSource: FakeEventSource })).toThrow(/organizationId/);
    expect(() => connect({ organizationId: "o", url: [], EventSource: FakeEventSource })).toThrow(/url/);
    expect(() => connect({ organizationId: "o", EventSource: undefined })).toThrow(/EventSource/);
  });

  it("delivers typed events to on(type) and onEvent, until unsubscribed", () => {
    const { client } = open();
    const props: string[] = [];
    const all: string[] = [];
    const off = client.on("property.update", (e) => props.push(String(e.payload.propertyId)));
    client.on("member.join", () => all.push("wrong"));
    client.onEvent((e) => all.push(e.type));
    const es = FakeEventSource.last.accept();
    es.send(propertyEvent("5-0", "p1"));
    off();
    es.send(propertyEvent("6-0", "p2"));
    expect(props).toEqual(["p1"]);
    expect(all).toEqual(["property.update", "property.update"]);
    expect(client.lastEventId).toBe("6-0");
  });

  it("ignores non-JSON data and unknown types", () => {
    const { client } = open();
    const seen: string[] = [];
    client.onEvent((e) => seen.push(e.type));
    const es = FakeEventSource.last.accept();
    (es.onmessage as (ev: MessageEvent) => void)(new MessageEvent("message", { data: "not json" }));
    es.send({ ...propertyEvent("7-0"), type: "brand.new" });
    es.send(propertyEvent("8-0"));
    expect(seen).toEqual(["property.update"]);
    expect(client.lastEventId).toBe("8-0");
  });

  it("reports its state: connecting, open, reconnecting, open, closed", async () => {
    const { client } = open();
    const states: ConnectionState[] = [];
    client.onStateChange((s) => states.push(s));
    expect(client.state).toBe("connecting");
    FakeEventSource.last.accept();
    FakeEventSource.last.fail();
    await vi.runOnlyPendingTimersAsync();
    FakeEventSource.last.accept();
    await client.close();
    expect(states).toEqual(["open", "reconnecting", "open", "closed"]);
  });

  it("fails over to the next URL, resuming after the last event, and drops replayed ids", async () => {
    const { client } = open();
    const ids: string[] = [];
    client.onEvent((e) => ids.push(e.id as string));
    const first = FakeEventSource.last.accept("c1");
    first.send(propertyEvent("10-0")).send(propertyEvent("10-1"));
    first.fail();
    expect(first.closed).toBe(true);
    expect(client.connectionId).toBeUndefined();
    await vi.runOnlyPendingTimersAsync();
    const second = FakeEventSource.last;
    expect(second).not.toBe(first);
    expect(second.url.origin).toBe("http://gw2.test");
    expect(second.url.searchParams.get("lastEventId")).toBe("10-1");
    // The other replica replays from an older point: nothing twice.
    second.accept("c2");
    second.send(propertyEvent("10-0")).send(propertyEvent("10-1")).send(propertyEvent("11-0"));
    expect(ids).toEqual(["10-0", "10-1", "11-0"]);
    expect(client.connectionId).toBe("c2");
    expect(client.currentUrl).toBe("http://gw2.test");
    // Round robin: back to the first one.
    second.fail();
    await vi.runOnlyPendingTimersAsync();
    expect(FakeEventSource.last.url.origin).toBe("http://gw1.test");
    expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("11-0");
  });

  it("backs off exponentially with jitter while every replica is down, up to the ceiling", async () => {
    vi.spyOn(Math, "random").mockReturnValue(1);
    open({ retryDelay: 100, maxRetryDelay: 350 });
    const delays: number[] = [];
    for (let i = 0; i < 4; i++) {
      const before = FakeEventSource.instances.length;
      FakeEventSource.last.fail();
      const started = Date.now();
      await vi.advanceTimersToNextTimerAsync();
      expect(FakeEventSource.instances.length).toBe(before + 1);
      delays.push(Date.now() - started);
    }
    expect(delays).toEqual([100, 200, 350, 350]);
    vi.mocked(Math.random).mockRestore();
  });

  it("orders ids numerically, not as text", () => {
    expect(isAfter("10-0", "9-0")).toBe(true);
    expect(isAfter("9-10", "9-9")).toBe(true);
    expect(isAfter("9-9", "9-9")).toBe(false);
    expect(isAfter("18446744073709551615-0", "18446744073709551614-9")).toBe(true);
  });

  it("calls onResync on data.sync; a gap notice without id keeps the resume point", () => {
    const { client } = open({ lastEventId: "3-0" });
    const resyncs: unknown[] = [];
    client.onResync((e) => resyncs.push(e.payload));
    const es = FakeEventSource.last;
    expect(es.url.searchParams.get("lastEventId")).toBe("3-0");
    es.accept();
    es.send({
      type: "data.sync",
      timestamp: 1,
      source: "api",
      version: "1.0",
      organizationId: "org1",
      payload: { reason: "gap", lastEventId: "3-0" },
    });
    expect(resyncs).toEqual([{ reason: "gap", lastEventId: "3-0" }]);
    expect(client.lastEventId).toBe("3-0");
    es.send(propertyEvent("90-0"));
    expect(client.lastEventId).toBe("90-0");
  });

  it("a routed row's data.sync is an event, not a signal to refetch", () => {
    const { client } = open();
    const resyncs: unknown[] = [];
    const rows: unknown[] = [];
    client.onResync((e) => resyncs.push(e.payload));
    client.on("data.sync", (e) => rows.push(e.payload));
    const es = FakeEventSource.last.accept();
    const row = { entityType: "client", entityId: "c1", operation: "update", data: { id: "c1" } };
    es.send({ id: "5-0", type: "data.sync", timestamp: 1, source: "postgres", version: "1.0", organizationId: "org1", payload: row });
    es.send({ id: "6-0", type: "data.sync", timestamp: 2, source: "postgres", version: "1.0", organizationId: null, payload: { entityType: "clients", operation: "truncate" } });
    expect(rows).toHaveLength(2);
    expect(resyncs).toEqual([{ entityType: "clients", operation: "truncate" }]);
  });

  it("persists the last id per organization and resumes from it", () => {
    const storage = memoryStorage();
    const { client } = open({ persist: true, storage });
    FakeEventSource.last.accept().send(propertyEvent("42-3"));
    expect(storage.getItem(storageKey("org1"))).toBe("42-3");
    void client.close();
    open({ persist: true, storage });
    expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("42-3");
    // An explicit resume point wins over the stored one.
    open({ persist: true, storage, lastEventId: "50-0" });
    expect(FakeEventSource.last.url.searchParams.get("lastEventId")).toBe("50-0");
    // Another organization has its own.
    open({ persist: true, storage, organizationId: "org2" });
    expect(FakeEventSource.last.url.searchParams.has("lastEventId")).toBe(false);
    // Without persist nothing is read or written.
    open({ storage });
    expect(FakeEventSource.last.url.searchParams.has("lastEventId")).toBe(false);
  });

  it("keeps one handler's exception from reaching the others", async () => {
    const { client } = open();
    const seen: string[] = [];
    client.onEvent(() => {
      throw new Error("app bug");
    });
    client.onEvent((e) => seen.push(e.id as string));
    FakeEventSource.last.accept().send(propertyEvent("1-0"));
    expect(seen).toEqual(["1-0"]);
    // The error is rethrown on its own task, as an uncaught error would be.
    await expect(vi.runOnlyPendingTimersAsync()).rejects.toThrow("app bug");
  });
});

describe("changeChannels", () => {
  it("PUTs the new channels for the open connection to its gateway", async () => {
    const { client, fetch } = open({ channels: ["property"] });
    FakeEventSource.last.accept("conn-1");
    await client.changeChannels(["property", "user"]);
    expect(fetch.requests).toHaveLength(1);
    const [req] = fetch.requests;
    expect(req?.url).toBe("http://gw1.test/api/realtime/stream?connectionId=conn-1");
    expect(req?.init?.method).toBe("PUT");
    expect(req?.init?.credentials).toBe("include");
    expect(JSON.parse(String(req?.init?.body))).toEqual({ channels: ["property", "user"] });
    expect(FakeEventSource.open()).toHaveLength(1);
    // A later reconnect asks for the new filter.
    FakeEventSource.last.fail();
    await vi.runOnlyPendingTimersAsync();
    expect(FakeEventSource.last.url.searchParams.get("channel")).toBe("property,user");
  });

  it("reconnects with the new channels, resuming, when the gateway refuses the PUT", async () => {
    const { client, fetch } = open({ channels: ["property"] });
    fetch.status = 404;
    const first = FakeEventSource.last.accept("conn-1").send(propertyEvent("4-0"));
    await client.changeChannels(["system"]);
    expect(first.closed).toBe(true);
    const next = FakeEventSource.last;
    expect(next).not.toBe(first);
    expect(next.url.searchParams.get("channel")).toBe("system");
    expect(next.url.searchParams.get("lastEventId")).toBe("4-0");
    expect(client.state).toBe("reconnecting");
  });

  it("reconnects when not open yet (no connection id to name)", async () => {
    const { client, fetch } = open();
    await client.changeChannels(["user"]);
    expect(fetch.requests).toHaveLength(0);
    expect(FakeEventSource.open()).toHaveLength(1);
    expect(FakeEventSource.last.url.searchParams.get("channel")).toBe("user");
  });
});

describe("close", () => {
  it("DELETEs the connection on its gateway and stops reconnecting", async () => {
    const { client, fetch } = open({ withCredentials: false });
    FakeEventSource.last.accept("conn-9");
    const es = FakeEventSource.last;
    await client.close();
    expect(es.closed).toBe(true);
    expect(client.state).toBe("closed");
    expect(fetch.requests).toEqual([
      {
        url: "http://gw1.test/api/realtime/stream?connectionId=conn-9",
        init: { method: "DELETE", credentials: "same-origin", keepalive: true },
      },
    ]);
    es.fail();
    await vi.runAllTimersAsync();
    expect(FakeEventSource.instances).toHaveLength(1);
    await client.close();
    expect(fetch.requests).toHaveLength(1);
    await client.changeChannels(["user"]);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it("cancels a pending reconnect and never rejects, even if the DELETE fails", async () => {
    const failing = (async () => {
      throw new TypeError("network down");
    }) as typeof fetch;
    const client = connect({
      organizationId: "org1",
      url: "http://gw1.test",
      EventSource: FakeEventSource,
      fetch: failing,
    });
    FakeEventSource.last.accept("c1");
    await expect(client.close()).resolves.toBeUndefined();
    const other = connect({ organizationId: "org1", url: "http://gw1.test", EventSource: FakeEventSource });
    FakeEventSource.last.fail();
    await other.close();
    await vi.runAllTimersAsync();
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it("keeps the socket until the DELETE is answered (at most 2 s), without reconnecting meanwhile", async () => {
    const hanging = (() => new Promise<Response>(() => {})) as typeof fetch;
    const client = connect({ organizationId: "org1", url: "http://gw1.test", EventSource: FakeEventSource, fetch: hanging });
    const es = FakeEventSource.last.accept("c1");
    let settled = false;
    const closing = client.close().then(() => {
      settled = true;
    });
    expect(client.state).toBe("closed");
    // The server ends the stream as it handles the DELETE: not a failure.
    es.fail();
    await vi.advanceTimersByTimeAsync(1_999);
    expect(es.closed).toBe(false);
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    await closing;
    expect(es.closed).toBe(true);
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});
