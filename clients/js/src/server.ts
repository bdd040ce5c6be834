/**
 * `@oikion/realtime/server`: publish events from server code through the
 * gateway's `POST /api/realtime/publish` (ARCHITECTURE.md §3).
 *
 * Server-side only (Node ≥ 18, Next.js route handlers and server actions,
 * edge runtimes): it needs the gateway's publish key (`REALTIME_PUBLISH_KEY`),
 * which must never reach a browser, so `publish()` refuses to run where a
 * `document` exists. It uses only the global `fetch`.
 *
 * The gateway writes the event through Postgres (`pg_logical_emit_message`),
 * so it is ordered with every other change and replayable like them. An
 * event that must commit together with the app's own writes is emitted in
 * the app's transaction instead (README: "Publishing from the app").
 */

import type { EventType, RealtimeEventMap } from "./events.js";

/** The publish path on a gateway. */
export const PUBLISH_PATH = "/api/realtime/publish";

/** Every type but `data.sync` (the gateway's and ingestor's own signal; the gateway refuses it). */
export type PublishableType = Exclude<EventType, "data.sync">;

/** An event to publish; `payload`'s type follows from `type`. */
export type PublishEvent<T extends PublishableType = PublishableType> = {
  [K in T]: {
    type: K;
    /** The organization whose streams receive it; absent: every organization (a broadcast). */
    organizationId?: string;
    payload: RealtimeEventMap[K]["payload"];
  } & (K extends "notification.new"
    ? /** Only this user's streams receive it (required for notifications). */ { userId: string }
    : { userId?: string });
}[T];

export interface PublishOptions {
  /** The gateway's base URL, e.g. `"https://rt.example.com"` or `"http://realtime-gateway:8080"`. */
  url: string;
  /** The gateway's `REALTIME_PUBLISH_KEY`, sent as `Authorization: Bearer <key>`. */
  key: string;
  /** Cancels the request (e.g. `AbortSignal.timeout(5000)`); an abort is a `network` failure. */
  signal?: AbortSignal;
  /** The global `fetch` by default. */
  fetch?: typeof fetch;
}

/** Accepted: the gateway wrote the event into the database's log. */
export interface PublishAccepted {
  ok: true;
  /**
   * The WAL position of the written message (`pg_logical_emit_message`'s
   * answer, e.g. `"0/1A2B3C8"`). The event's own `id` (`<commit LSN>-<index>`)
   * is given by the ingestor when it reads the commit; the gateway does not
   * wait for it.
   */
  lsn: string;
}

/**
 * Why a publish failed:
 * - `unauthorized` (401): no or wrong publish key;
 * - `bad_request` (400): the body was refused, `message` says which field;
 * - `too_large` (413): over the gateway's `REALTIME_MAX_PUBLISH_BYTES`;
 * - `disabled` (404): the gateway has no `REALTIME_PUBLISH_KEY`;
 * - `rate_limited` (429): too many requests or wrong keys from this address;
 * - `unavailable` (503): the gateway cannot reach Postgres;
 * - `network`: no answer (refused, reset, aborted);
 * - `unexpected`: any other status.
 * `retryable` is true for `rate_limited`, `unavailable` and `network`
 * (after `retryAfter` seconds when the gateway said so).
 */
export type PublishErrorKind =
  | "unauthorized"
  | "bad_request"
  | "too_large"
  | "disabled"
  | "rate_limited"
  | "unavailable"
  | "network"
  | "unexpected";

export interface PublishFailure {
  ok: false;
  kind: PublishErrorKind;
  /** The HTTP status; 0 for `network`. */
  status: number;
  /** The gateway's reason (its text answer, trimmed) or the network error's message. */
  message: string;
  retryable: boolean;
  /** Seconds, from the answer's `Retry-After`. */
  retryAfter?: number;
}

export type PublishResult = PublishAccepted | PublishFailure;

const KINDS: Record<number, PublishErrorKind> = {
  400: "bad_request",
  401: "unauthorized",
  404: "disabled",
  413: "too_large",
  429: "rate_limited",
  503: "unavailable",
};

/** Longest reason kept from an answer's body. */
const MAX_MESSAGE_CHARS = 1_000;

/**
 * Publishes one event. Resolves with `{ok: true, lsn}` or a typed
 * {@link PublishFailure}; it rejects only on misuse (no `url` or `key`,
 * called in a browser).
 *
 * ```ts
 * const r = await publish({ url, key }, {
 *   type: "notification.new",
 *   organizationId: "org_1",
 *   userId: "user_9",
 *   payload: { userId: "user_9", title: "New lead", message: "…", priority: "high", category: "lead" },
 * });
 * if (!r.ok && r.retryable) … // retry later
 * ```
 */
export async function publish<T extends PublishableType>(
  options: PublishOptions,
  event: PublishEvent<T>,
): Promise<PublishResult> {
  if (typeof document !== "undefined") {
    throw new Error("publish() is server-side only: the publish key must never reach a browser");
  }
  if (!options.url && options.url !== "") throw new TypeError("publish: `url` is required");
  if (!options.key) throw new TypeError("publish: `key` is required");
  const doFetch = options.fetch ?? globalThis.fetch;
  if (!doFetch) throw new TypeError("publish: no global fetch here (pass options.fetch)");
  const body: Record<string, unknown> = { type: event.type, payload: event.payload };
  if (event.organizationId !== undefined) body.organizationId = event.organizationId;
  if (event.userId !== undefined) body.userId = event.userId;
  let response: Response;
  try {
    response = await doFetch(`${options.url.replace(/\/+$/, "")}${PUBLISH_PATH}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${options.key}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: options.signal,
    });
  } catch (error) {
    return failure("network", 0, error instanceof Error ? error.message : String(error));
  }
  let text = "";
  try {
    text = await response.text();
  } catch (error) {
    return failure("network", response.status, error instanceof Error ? error.message : String(error));
  }
  if (response.status === 202 || response.ok) {
    try {
      const answer = JSON.parse(text) as { lsn?: unknown };
      if (typeof answer.lsn === "string") return { ok: true, lsn: answer.lsn };
    } catch {
      // fall through
    }
    return failure("unexpected", response.status, `unexpected answer: ${text.slice(0, 200)}`);
  }
  const kind = KINDS[response.status] ?? "unexpected";
  const retryAfter = Number.parseInt(response.headers.get("retry-after") ?? "", 10);
  return failure(kind, response.status, text.trim(), Number.isFinite(retryAfter) ? retryAfter : undefined);
}

function failure(kind: PublishErrorKind, status: number, message: string, retryAfter?: number): PublishFailure {
  const result: PublishFailure = {
    ok: false,
    kind,
    status,
    message: message.slice(0, MAX_MESSAGE_CHARS),
    retryable: kind === "rate_limited" || kind === "unavailable" || kind === "network",
  };
  if (retryAfter !== undefined) result.retryAfter = retryAfter;
  return result;
}

/** `publish` with the options bound: `const rt = createPublisher({url, key}); await rt.publish({...})`. */
export function createPublisher(options: PublishOptions): {
  publish<T extends PublishableType>(event: PublishEvent<T>): Promise<PublishResult>;
} {
  return { publish: (event) => publish(options, event) };
}

export type { EventType, RealtimeEventMap } from "./events.js";
