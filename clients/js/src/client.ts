/**
 * `connect()`: one organization's event stream from the realtime gateway, over
 * the browser's `EventSource`.
 *
 * Contract:
 * - Events are delivered at most once and in commit order: an event whose id is
 *   not after the last one seen is dropped (a replica that replays from an
 *   older point after a failover cannot duplicate anything).
 * - Nothing is lost across reconnects: every new connection passes the last
 *   id seen as the `lastEventId` query parameter, and the gateway replays the
 *   history after it. (EventSource's own `Last-Event-ID` header only survives
 *   its automatic reconnects to the same URL, and this client makes its own
 *   reconnects, to the next replica, so it uses the query parameter.)
 * - When the history no longer reaches back that far the gateway sends one
 *   `data.sync` (`reason: "gap"`); `onResync` handlers run so the app refetches.
 * - With `persist`, the last id is saved per organization in `sessionStorage`,
 *   so a page reload resumes where the previous page stopped.
 * - `url` may list several gateway base URLs: every failure moves to the next
 *   one, round robin, after a backoff with jitter (so a replica's clients do
 *   not all land on the next one in the same millisecond). A failure is any
 *   stream that ends before or after its `connection` message: a network
 *   error, a 429/503, the gateway's transient refusal (a 200 event stream
 *   holding only `retry:` and a reason comment), a stream cut. The backoff
 *   grows until a stream delivers its `connection` message.
 * - 401 and 403 are final: the user is not signed in, or not a member. The
 *   client stops (state `closed`) and calls `onError` with the status and the
 *   gateway's reason. `EventSource` hides the status of a refused request, so
 *   when the browser failed the connection (readyState CLOSED: a non-200
 *   answer, not a network error or a stream end) the client asks once more
 *   with `fetch` to read the status and the body's text.
 * - With `pauseWhenHidden`, a tab hidden for that long drops its stream (and
 *   tells its gateway) and resumes after the last event once visible again.
 */

import {
  type Channel,
  type ConnectionMessage,
  type DataSyncEvent,
  type EventType,
  type RealtimeEvent,
  type RealtimeEventMap,
  isEventType,
} from "./events.js";

/** The stream path on a gateway (ARCHITECTURE.md §3). */
export const STREAM_PATH = "/api/realtime/stream";

/** Longest wait for the gateway to answer `close()`'s DELETE before the socket is dropped anyway. */
const CLOSE_WAIT_MS = 2_000;

/**
 * `paused`: dropped while the tab is hidden (`pauseWhenHidden`); `closed`: by
 * `close()` or after a fatal refusal (401/403, see `onError`).
 */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "paused" | "closed";

/** Longest body text of a refusal kept in a {@link RealtimeError}. */
const MAX_REASON_CHARS = 500;

/** How long a tab stays hidden before `pauseWhenHidden: true` drops its stream. */
export const DEFAULT_PAUSE_AFTER_MS = 30_000;

/**
 * A final refusal of the stream: 401 (not signed in, session expired) or 403
 * (not a member of the organization). The client has stopped; reconnecting
 * would be refused the same way until the app changes something (signs the
 * user in, picks another organization) and calls `connect()` again.
 */
export interface RealtimeError {
  status: 401 | 403;
  /** The gateway's reason: the refusal's body text, trimmed (e.g. `not a member of this organization`). */
  message: string;
  /** The stream URL that was refused. */
  url: string;
}

/** The part of `document` that `pauseWhenHidden` uses. */
export interface VisibilitySource {
  readonly visibilityState: string;
  addEventListener(type: "visibilitychange", listener: () => void): void;
  removeEventListener(type: "visibilitychange", listener: () => void): void;
}

export interface ConnectOptions {
  /**
   * Gateway base URL(s), e.g. `"https://rt.example.com"`, or `""` for the
   * page's own origin (a Next.js app proxying `/api/realtime/stream`). A
   * list is tried in order, moving to the next one on each failure.
   */
  url?: string | readonly string[];
  organizationId: string;
  /** Channel filter; absent or empty: every event type. */
  channels?: readonly Channel[];
  /** Send cookies (the Auth.js session) to a gateway on another origin. Default `true`. */
  withCredentials?: boolean;
  /** Resume after this event id (overrides a persisted one). */
  lastEventId?: string;
  /** Save the last event id in `sessionStorage` so a reload resumes. Default `false`. */
  persist?: boolean;
  /** First reconnect delay in ms (doubled per failed attempt, with jitter). Default 500. */
  retryDelay?: number;
  /** Longest reconnect delay in ms. Default 15000. */
  maxRetryDelay?: number;
  /**
   * Drop the stream while the tab is hidden: `true` after
   * {@link DEFAULT_PAUSE_AFTER_MS} hidden, or after this many ms. When the
   * tab is visible again the client reconnects at once, resuming after the
   * last event (nothing is lost; a long absence gets `data.sync`). Default
   * `false`. Without a `document` (Node, workers) it does nothing.
   */
  pauseWhenHidden?: boolean | number;
  /** Called once when the stream is refused for good (401/403); same as `client.onError`. */
  onError?: (error: RealtimeError) => void;
  /** Seams for tests and non-browser runtimes; default to the globals. */
  EventSource?: EventSourceConstructor;
  fetch?: typeof fetch;
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem"> | null;
  /** `document` by default; `null`: no visibility tracking. */
  document?: VisibilitySource | null;
}

/** The constructor shape this client needs from `EventSource`. */
export type EventSourceConstructor = new (
  url: string,
  init?: { withCredentials?: boolean },
) => EventSourceLike;

/** The subset of `EventSource` this client uses. */
export interface EventSourceLike {
  onopen: ((this: never, ev: Event) => unknown) | null;
  onmessage: ((this: never, ev: MessageEvent) => unknown) | null;
  onerror: ((this: never, ev: Event) => unknown) | null;
  /** 2 (CLOSED) after an error: the browser failed the connection (a non-200 answer). */
  readonly readyState?: number;
  close(): void;
}

/** `EventSource.CLOSED`. */
const CLOSED = 2;

export type Unsubscribe = () => void;

export interface RealtimeClient {
  /** Calls `handler` for each event of `type`; returns the unsubscribe function. */
  on<T extends EventType>(type: T, handler: (event: RealtimeEventMap[T]) => void): Unsubscribe;
  /** Calls `handler` for every event. */
  onEvent(handler: (event: RealtimeEvent) => void): Unsubscribe;
  /** Calls `handler` on every state change (not with the current state). */
  onStateChange(handler: (state: ConnectionState) => void): Unsubscribe;
  /**
   * Calls `handler` on each signal to refetch: a `data.sync` with a `reason`
   * (gap, slot_lost) or `operation: "truncate"`. A routed row that changed
   * (`data.sync` with `entityId` and `data`) is an ordinary event: use
   * `on("data.sync", …)` for those.
   */
  onResync(handler: (event: DataSyncEvent) => void): Unsubscribe;
  /** Calls `handler` with each connection's first message. */
  onConnection(handler: (message: ConnectionMessage) => void): Unsubscribe;
  /** Calls `handler` when the stream is refused for good (401/403); the client is then `closed`. */
  onError(handler: (error: RealtimeError) => void): Unsubscribe;
  /** The final refusal that stopped the client, if any. */
  readonly error: RealtimeError | undefined;
  readonly state: ConnectionState;
  /** The id of the last event delivered (or the resume point), if any. */
  readonly lastEventId: string | undefined;
  /** The current connection's id (from its `connection` message), if open. */
  readonly connectionId: string | undefined;
  /** The base URL of the gateway in use. */
  readonly currentUrl: string;
  /**
   * Changes the channel filter. On an open connection this asks its gateway
   * (`PUT /api/realtime/stream?connectionId=`); if that fails (no such
   * endpoint, connection gone) the client reconnects with the new filter,
   * resuming after the last event, so nothing is lost either way.
   */
  changeChannels(channels: readonly Channel[]): Promise<void>;
  /**
   * Closes the stream for good and tells its gateway
   * (`DELETE /api/realtime/stream?connectionId=`) so the server frees the
   * connection at once, even behind a proxy that keeps the TCP connection.
   * The promise settles when that request did; it never rejects.
   */
  close(): Promise<void>;
}

/** The `sessionStorage` key holding an organization's last event id. */
export function storageKey(organizationId: string): string {
  return `realtime:lastEventId:${organizationId}`;
}

/** Parses `<lsn>-<index>` into a comparable pair; `undefined` if malformed. */
export function parseEventId(id: string): [bigint, bigint] | undefined {
  const m = /^(\d{1,20})-(\d{1,20})$/.exec(id);
  if (!m) return undefined;
  return [BigInt(m[1] as string), BigInt(m[2] as string)];
}

/** Whether event id `a` comes after `b` in commit order. */
export function isAfter(a: string, b: string): boolean {
  const pa = parseEventId(a);
  const pb = parseEventId(b);
  if (!pa || !pb) return a !== b;
  return pa[0] > pb[0] || (pa[0] === pb[0] && pa[1] > pb[1]);
}

/** The stream URL for one connection attempt. */
export function streamUrl(
  base: string,
  organizationId: string,
  channels: readonly Channel[] | undefined,
  lastEventId: string | undefined,
): string {
  const params = new URLSearchParams({ organizationId });
  if (channels && channels.length > 0) params.set("channel", channels.join(","));
  if (lastEventId) params.set("lastEventId", lastEventId);
  return `${base.replace(/\/+$/, "")}${STREAM_PATH}?${params.toString()}`;
}

function defaultDocument(): VisibilitySource | null {
  return typeof document === "undefined" ? null : (document as VisibilitySource);
}

function defaultStorage(): ConnectOptions["storage"] {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    // Storage can throw when disabled (privacy settings, sandboxed frames).
    return null;
  }
}

/** Opens the stream; the returned client reconnects until `close()`. */
export function connect(options: ConnectOptions): RealtimeClient {
  const urls = (Array.isArray(options.url) ? [...options.url] : [options.url ?? ""]) as string[];
  if (urls.length === 0) throw new Error("connect: `url` lists no gateway");
  if (!options.organizationId) throw new Error("connect: `organizationId` is required");
  const maybeES = options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource;
  if (!maybeES) throw new Error("connect: no EventSource in this environment (pass options.EventSource)");
  const ES: EventSourceConstructor = maybeES;
  const doFetch: typeof fetch | undefined = options.fetch ?? globalThis.fetch?.bind(globalThis);
  const storage = options.persist ? (options.storage === undefined ? defaultStorage() : options.storage) : null;
  const withCredentials = options.withCredentials ?? true;
  const retryDelay = options.retryDelay ?? 500;
  const maxRetryDelay = options.maxRetryDelay ?? 15_000;
  const key = storageKey(options.organizationId);
  const pauseAfter =
    options.pauseWhenHidden === true
      ? DEFAULT_PAUSE_AFTER_MS
      : typeof options.pauseWhenHidden === "number" && options.pauseWhenHidden >= 0
        ? options.pauseWhenHidden
        : undefined;
  const visibility =
    pauseAfter === undefined ? null : options.document === undefined ? defaultDocument() : options.document;

  let channels: readonly Channel[] | undefined = options.channels;
  let lastEventId: string | undefined = options.lastEventId ?? readStored();
  let state: ConnectionState = "connecting";
  let urlIndex = 0;
  let failures = 0;
  let source: EventSourceLike | undefined;
  let connectionId: string | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let pauseTimer: ReturnType<typeof setTimeout> | undefined;
  let fatal: RealtimeError | undefined;

  const typed = new Map<string, Set<(event: never) => void>>();
  const any = new Set<(event: RealtimeEvent) => void>();
  const stateHandlers = new Set<(state: ConnectionState) => void>();
  const resyncHandlers = new Set<(event: DataSyncEvent) => void>();
  const connectionHandlers = new Set<(message: ConnectionMessage) => void>();
  const errorHandlers = new Set<(error: RealtimeError) => void>();
  if (options.onError) errorHandlers.add(options.onError);

  function readStored(): string | undefined {
    try {
      return storage?.getItem(key) ?? undefined;
    } catch {
      return undefined;
    }
  }

  function store(id: string): void {
    try {
      storage?.setItem(key, id);
    } catch {
      // Full or disabled storage: resuming after a reload is best effort.
    }
  }

  function add<H>(set: Set<H>, handler: H): Unsubscribe {
    set.add(handler);
    return () => {
      set.delete(handler);
    };
  }

  /** Runs handlers so that one throwing cannot stop the others or the stream. */
  function emit<A>(handlers: Iterable<(arg: A) => void>, arg: A): void {
    for (const handler of [...handlers]) {
      try {
        handler(arg);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  function setState(next: ConnectionState): void {
    if (next === state) return;
    state = next;
    emit(stateHandlers, next);
  }

  function open(): void {
    timer = undefined;
    const base = urls[urlIndex % urls.length] as string;
    const url = streamUrl(base, options.organizationId, channels, lastEventId);
    const es = new ES(url, { withCredentials });
    source = es;
    // `open` alone is not a working stream: the gateway's transient refusal
    // is a 200 event stream too. The stream counts as open (and the backoff
    // restarts) with its `connection` message, in `receive`.
    es.onmessage = (message: MessageEvent) => {
      if (source === es) receive(message);
    };
    es.onerror = () => {
      if (source !== es) return;
      // Take reconnection over from EventSource: it would retry the same
      // URL with a Last-Event-ID that this client tracks better itself.
      const refused = es.readyState === CLOSED;
      es.close();
      source = undefined;
      connectionId = undefined;
      if (refused && doFetch) {
        setState("reconnecting");
        void probe(url);
      } else {
        scheduleReconnect();
      }
    };
  }

  /**
   * The browser refused the stream (a non-200 answer) without saying why:
   * ask the same URL once with `fetch` to read the status. 401/403 stop
   * the client; anything else (429, 503, a 200 this time, a network or
   * CORS failure) is retried with the usual backoff. Only the head (and
   * the short text of a 401/403) is read; any other body is cancelled.
   */
  async function probe(url: string): Promise<void> {
    const abort = typeof AbortController === "undefined" ? undefined : new AbortController();
    let status = 0;
    let text = "";
    try {
      const response = await (doFetch as typeof fetch)(url, {
        headers: { Accept: "text/event-stream" },
        credentials: withCredentials ? "include" : "same-origin",
        signal: abort?.signal,
      });
      status = response.status;
      if (status === 401 || status === 403) {
        text = (await response.text()).trim().slice(0, MAX_REASON_CHARS);
      } else {
        abort?.abort();
        void response.body?.cancel().catch(() => undefined);
      }
    } catch {
      status = 0; // network or CORS failure: not known to be final
    }
    if (state === "closed" || state === "paused" || source !== undefined || timer !== undefined) return;
    if (status === 401 || status === 403) {
      fail({ status, message: text || (status === 401 ? "Unauthorized" : "Forbidden"), url });
    } else {
      scheduleReconnect();
    }
  }

  function fail(error: RealtimeError): void {
    fatal = error;
    stopWatchingVisibility();
    setState("closed");
    emit(errorHandlers, error);
  }

  function scheduleReconnect(): void {
    if (state === "closed" || state === "paused") return;
    setState("reconnecting");
    failures += 1;
    urlIndex = (urlIndex + 1) % urls.length;
    const ceiling = Math.min(maxRetryDelay, retryDelay * 2 ** Math.min(failures - 1, 20));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    timer = setTimeout(open, delay);
  }

  function receive(message: MessageEvent): void {
    let data: unknown;
    try {
      data = JSON.parse(String(message.data));
    } catch {
      return; // not ours: the gateway only sends JSON
    }
    if (typeof data !== "object" || data === null) return;
    const type = (data as { type?: unknown }).type;
    if (type === "connection") {
      connectionId = (data as ConnectionMessage).connectionId;
      failures = 0;
      setState("open");
      emit(connectionHandlers, data as ConnectionMessage);
      return;
    }
    if (!isEventType(type)) return; // a newer server's type: ignore, never crash
    const event = data as RealtimeEvent;
    const id = typeof event.id === "string" && event.id !== "" ? event.id : undefined;
    if (id !== undefined) {
      if (lastEventId !== undefined && !isAfter(id, lastEventId)) return;
      lastEventId = id;
      store(id);
    }
    emit(typed.get(type) ?? [], event as never);
    emit(any, event);
    if (event.type === "data.sync" && !("entityId" in event.payload)) emit(resyncHandlers, event);
  }

  function controlUrl(): string | undefined {
    if (!connectionId) return undefined;
    const base = (urls[urlIndex % urls.length] as string).replace(/\/+$/, "");
    return `${base}${STREAM_PATH}?connectionId=${encodeURIComponent(connectionId)}`;
  }

  /** Drops the current stream, asking its gateway to free it at once (fire and forget). */
  function dropStream(): void {
    const url = controlUrl();
    source?.close();
    source = undefined;
    connectionId = undefined;
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (url && doFetch) {
      doFetch(url, {
        method: "DELETE",
        credentials: withCredentials ? "include" : "same-origin",
        keepalive: true,
      }).catch(() => undefined);
    }
  }

  function onVisibilityChange(): void {
    if (!visibility || state === "closed") return;
    if (visibility.visibilityState === "hidden") {
      if (pauseTimer === undefined && state !== "paused") {
        pauseTimer = setTimeout(() => {
          pauseTimer = undefined;
          if (state === "closed" || visibility.visibilityState !== "hidden") return;
          dropStream();
          setState("paused");
        }, pauseAfter);
      }
    } else {
      if (pauseTimer !== undefined) clearTimeout(pauseTimer);
      pauseTimer = undefined;
      if (state === "paused") {
        // Back in view: resume after the last event at once (the query
        // carries it), on the same gateway, with a fresh backoff.
        failures = 0;
        setState("connecting");
        open();
      }
    }
  }

  function stopWatchingVisibility(): void {
    if (pauseTimer !== undefined) clearTimeout(pauseTimer);
    pauseTimer = undefined;
    visibility?.removeEventListener("visibilitychange", onVisibilityChange);
  }

  function reconnectNow(): void {
    if (state === "closed") return;
    if (state === "paused") return; // the new filter applies when the tab is back
    source?.close();
    source = undefined;
    connectionId = undefined;
    if (timer !== undefined) clearTimeout(timer);
    setState("reconnecting");
    open();
  }

  const client: RealtimeClient = {
    on(type, handler) {
      let set = typed.get(type);
      if (!set) {
        set = new Set();
        typed.set(type, set);
      }
      return add(set, handler as (event: never) => void);
    },
    onEvent: (handler) => add(any, handler),
    onStateChange: (handler) => add(stateHandlers, handler),
    onResync: (handler) => add(resyncHandlers, handler),
    onConnection: (handler) => add(connectionHandlers, handler),
    onError: (handler) => add(errorHandlers, handler),
    get error() {
      return fatal;
    },
    get state() {
      return state;
    },
    get lastEventId() {
      return lastEventId;
    },
    get connectionId() {
      return connectionId;
    },
    get currentUrl() {
      return urls[urlIndex % urls.length] as string;
    },
    async changeChannels(next) {
      channels = [...next];
      const url = controlUrl();
      if (state === "closed") return;
      if (url && doFetch && state === "open") {
        try {
          const response = await doFetch(url, {
            method: "PUT",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ channels: next }),
            credentials: withCredentials ? "include" : "same-origin",
          });
          if (response.ok) return;
        } catch {
          // fall through: reconnect with the new filter
        }
      }
      reconnectNow();
    },
    async close() {
      if (state === "closed") return;
      const url = controlUrl();
      const es = source;
      // Detach first: the stream ending from here on is expected, not a
      // reason to reconnect.
      source = undefined;
      connectionId = undefined;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      stopWatchingVisibility();
      setState("closed");
      if (url && doFetch) {
        // Ask the server before dropping the socket: the request names a
        // connection it still holds (once the socket is gone the server
        // forgets the id and would answer 404). Bounded, so a gateway that
        // does not answer cannot keep the stream open.
        const request = doFetch(url, {
          method: "DELETE",
          credentials: withCredentials ? "include" : "same-origin",
          keepalive: true,
        }).then(
          () => undefined,
          () => undefined, // closed locally below anyway; the server notices the socket
        );
        let bound: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([request, new Promise<void>((resolve) => (bound = setTimeout(resolve, CLOSE_WAIT_MS)))]);
        clearTimeout(bound);
      }
      es?.close();
    },
  };

  visibility?.addEventListener("visibilitychange", onVisibilityChange);
  open();
  // A tab opened in the background counts as hidden from now on.
  if (visibility?.visibilityState === "hidden") onVisibilityChange();
  return client;
}
