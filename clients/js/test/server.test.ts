import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { describe, expect, expectTypeOf, it } from "vitest";

import { createPublisher, PUBLISH_PATH, type PublishEvent, publish } from "../src/server.js";

function answering(status: number, body: string, headers: Record<string, string> = {}) {
  const requests: { url: string; init: RequestInit | undefined }[] = [];
  const f = (async (input: RequestInfo | URL, init?: RequestInit) => {
    requests.push({ url: String(input), init });
    return new Response(body, { status, headers });
  }) as typeof fetch & { requests: typeof requests };
  f.requests = requests;
  return f;
}

const alert = { type: "system.alert", organizationId: "org1", payload: { message: "hi" } } as const;

describe("publish", () => {
  it("POSTs the event with the publish key and returns the LSN", async () => {
    const fetch = answering(202, '{"status":"accepted","lsn":"0/1A2B3C8"}', { "content-type": "application/json" });
    const result = await publish({ url: "http://gw.test/", key: "k".repeat(32), fetch }, alert);
    expect(result).toEqual({ ok: true, lsn: "0/1A2B3C8" });
    const [request] = fetch.requests;
    expect(request?.url).toBe(`http://gw.test${PUBLISH_PATH}`);
    expect(request?.init?.method).toBe("POST");
    expect(new Headers(request?.init?.headers).get("authorization")).toBe(`Bearer ${"k".repeat(32)}`);
    expect(new Headers(request?.init?.headers).get("content-type")).toBe("application/json");
    expect(JSON.parse(String(request?.init?.body))).toEqual({
      type: "system.alert",
      organizationId: "org1",
      payload: { message: "hi" },
    });
  });

  it("sends userId only when given, and no organization for a broadcast", async () => {
    const fetch = answering(202, '{"status":"accepted","lsn":"0/1"}');
    await createPublisher({ url: "http://gw.test", key: "k", fetch }).publish({
      type: "notification.new",
      userId: "u1",
      payload: { userId: "u1", title: "t", message: "m", priority: "high", category: "lead" },
    });
    expect(JSON.parse(String(fetch.requests[0]?.init?.body))).toEqual({
      type: "notification.new",
      userId: "u1",
      payload: { userId: "u1", title: "t", message: "m", priority: "high", category: "lead" },
    });
  });

  for (const [status, kind, retryable] of [
    [400, "bad_request", false],
    [401, "unauthorized", false],
    [404, "disabled", false],
    [413, "too_large", false],
    [429, "rate_limited", true],
    [503, "unavailable", true],
    [500, "unexpected", false],
  ] as const) {
    it(`maps ${status} to a typed ${kind} failure with the gateway's reason`, async () => {
      const fetch = answering(status, "the reason\n", { "retry-after": "3" });
      const result = await publish({ url: "http://gw.test", key: "k", fetch }, alert);
      expect(result).toEqual({ ok: false, kind, status, message: "the reason", retryable, retryAfter: 3 });
    });
  }

  it("a network failure is a retryable `network` failure, not a rejection", async () => {
    const fetch = (async () => {
      throw new TypeError("fetch failed");
    }) as unknown as typeof globalThis.fetch;
    const result = await publish({ url: "http://gw.test", key: "k", fetch }, alert);
    expect(result).toEqual({ ok: false, kind: "network", status: 0, message: "fetch failed", retryable: true });
  });

  it("a 2xx that is not the gateway's answer is `unexpected`", async () => {
    const result = await publish({ url: "http://gw.test", key: "k", fetch: answering(200, "<html>") }, alert);
    expect(result.ok).toBe(false);
    expect(!result.ok && result.kind).toBe("unexpected");
  });

  it("rejects misuse: no key, no url, in a browser", async () => {
    const fetch = answering(202, "{}");
    await expect(publish({ url: "http://gw.test", key: "", fetch }, alert)).rejects.toThrow(/key/);
    await expect(publish({ url: undefined as unknown as string, key: "k", fetch }, alert)).rejects.toThrow(/url/);
    const g = globalThis as { document?: unknown };
    g.document = {};
    try {
      await expect(publish({ url: "http://gw.test", key: "k", fetch }, alert)).rejects.toThrow(/server-side only/);
    } finally {
      delete g.document;
    }
    expect(fetch.requests).toEqual([]);
  });

  it("types the payload by the event type", () => {
    expectTypeOf<Extract<PublishEvent, { type: "member.leave" }>["payload"]>().toHaveProperty("memberId");
    // @ts-expect-error data.sync is the gateway's own signal, not publishable
    const sync: PublishEvent = { type: "data.sync", payload: { reason: "gap", lastEventId: null } };
    // @ts-expect-error a notification needs userId
    const noUser: PublishEvent<"notification.new"> = {
      type: "notification.new",
      payload: { userId: "u", title: "t", message: "m", priority: "low", category: "c" },
    };
    const wrongPayload: PublishEvent<"member.join"> = {
      type: "member.join",
      // @ts-expect-error member.join's payload has no `title`
      payload: { memberId: "u", organizationId: "o", role: "AGENT", title: "x" },
    };
    void [sync, noUser, wrongPayload];
  });
});

describe("package.json", () => {
  const pkg = JSON.parse(readFileSync(fileURLToPath(new URL("../package.json", import.meta.url)), "utf8")) as {
    exports: Record<string, Record<string, string> | string>;
  };

  it("gives every entry point types, import and a last `default` condition", () => {
    for (const entry of [".", "./react", "./server"]) {
      const conditions = pkg.exports[entry] as Record<string, string>;
      expect(Object.keys(conditions), entry).toEqual(["types", "import", "default"]);
      expect(conditions.default, entry).toBe(conditions.import);
    }
  });
});
