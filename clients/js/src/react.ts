"use client";

/**
 * React hooks over `connect()`.
 *
 * One stream per (gateway URLs, organization, channels, credentials, persist)
 * per tab, however many components use it: components share a reference-
 * counted client, and the stream closes when the last one unmounts. The close
 * waits one macrotask so that an unmount immediately followed by a mount of
 * the same stream (React StrictMode, a keyed re-render) keeps the connection
 * instead of dropping and reopening it.
 */

import {
  createContext,
  createElement,
  type ReactNode,
  useContext,
  useEffect,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";

import {
  type ConnectOptions,
  type ConnectionState,
  connect,
  type RealtimeClient,
  type RealtimeError,
} from "./client.js";
import type { Channel, DataSyncEvent, PropertyUpdateEvent, RealtimeEvent } from "./events.js";

/** Defaults for every hook below a provider. */
export interface RealtimeConfig {
  /** Gateway base URL(s); default `""`, the page's own origin. */
  url?: string | readonly string[];
  withCredentials?: boolean;
  persist?: boolean;
  /** Drop the stream of a hidden tab (see `connect()`); default `false`. */
  pauseWhenHidden?: boolean | number;
  /** Passed through to `connect()` (tests, other runtimes). */
  EventSource?: ConnectOptions["EventSource"];
  fetch?: ConnectOptions["fetch"];
}

const ConfigContext = createContext<RealtimeConfig>({});

/** Sets the gateway URL(s) and options for the hooks below it. */
export function RealtimeProvider(props: RealtimeConfig & { children?: ReactNode }): ReactNode {
  const { children, ...config } = props;
  return createElement(ConfigContext.Provider, { value: config }, children);
}

export interface UseRealtimeOptions extends RealtimeConfig {
  channels?: readonly Channel[];
  /** Every event of the stream; the latest function is used, no resubscribe on change. */
  onEvent?: (event: RealtimeEvent) => void;
  /** `data.sync`: refetch. */
  onResync?: (event: DataSyncEvent) => void;
  /** The stream was refused for good (401/403); the latest function is used. */
  onError?: (error: RealtimeError) => void;
  /** `false`: no stream (e.g. until the organization is known). Default `true`. */
  enabled?: boolean;
}

export interface UseRealtimeResult {
  state: ConnectionState;
  /** The shared client, for `changeChannels` or typed `on()`; `undefined` when disabled. */
  client: RealtimeClient | undefined;
  /** The final refusal (401/403) that closed the shared stream, if any. */
  error: RealtimeError | undefined;
}

interface Shared {
  client: RealtimeClient;
  users: number;
  closing: ReturnType<typeof setTimeout> | undefined;
}

const streams = new Map<string, Shared>();

/** How many shared streams are open in this tab (for tests and diagnostics). */
export function openStreamCount(): number {
  return streams.size;
}

function streamKey(organizationId: string, config: RealtimeConfig, channels?: readonly Channel[]): string {
  const urls = Array.isArray(config.url) ? [...config.url] : [config.url ?? ""];
  return JSON.stringify([
    urls,
    organizationId,
    [...(channels ?? [])].sort(),
    config.withCredentials ?? true,
    config.persist ?? false,
    config.pauseWhenHidden ?? false,
  ]);
}

function acquire(key: string, make: () => RealtimeClient): Shared {
  let shared = streams.get(key);
  if (!shared) {
    shared = { client: make(), users: 0, closing: undefined };
    streams.set(key, shared);
  }
  if (shared.closing !== undefined) {
    clearTimeout(shared.closing);
    shared.closing = undefined;
  }
  shared.users += 1;
  return shared;
}

function release(key: string, shared: Shared): void {
  shared.users -= 1;
  if (shared.users > 0) return;
  shared.closing = setTimeout(() => {
    if (shared.users === 0 && streams.get(key) === shared) {
      streams.delete(key);
      void shared.client.close();
    }
  }, 0);
}

const noop = () => {};

/**
 * Subscribes the component to an organization's stream (shared per tab) and
 * returns its connection state and client. The stream is acquired in an
 * effect, so a render that never commits opens nothing; until then the state
 * is `connecting` (or `closed` when disabled).
 */
export function useRealtime(organizationId: string | undefined, options: UseRealtimeOptions = {}): UseRealtimeResult {
  const defaults = useContext(ConfigContext);
  const config: RealtimeConfig = { ...defaults, ...stripUndefined(options) };
  const enabled = (options.enabled ?? true) && !!organizationId;
  const key = enabled ? streamKey(organizationId as string, config, options.channels) : undefined;

  const latest = useRef({ options, config, organizationId });
  latest.current = { options, config, organizationId };

  const [held, setHeld] = useState<{ key: string; shared: Shared } | undefined>(undefined);

  useEffect(() => {
    if (key === undefined) return undefined;
    const shared = acquire(key, () => {
      const { config: c, options: o, organizationId: org } = latest.current;
      return connect({
        url: c.url,
        organizationId: org as string,
        channels: o.channels,
        withCredentials: c.withCredentials,
        persist: c.persist,
        pauseWhenHidden: c.pauseWhenHidden,
        EventSource: c.EventSource,
        fetch: c.fetch,
      });
    });
    setHeld({ key, shared });
    const offEvent = shared.client.onEvent((event) => latest.current.options.onEvent?.(event));
    const offResync = shared.client.onResync((event) => latest.current.options.onResync?.(event));
    const offError = shared.client.onError((error) => latest.current.options.onError?.(error));
    return () => {
      offEvent();
      offResync();
      offError();
      release(key, shared);
    };
  }, [key]);

  const client = held !== undefined && held.key === key ? held.shared.client : undefined;
  const fallback = (): ConnectionState => (key === undefined ? "closed" : "connecting");
  const state = useSyncExternalStore(
    client ? client.onStateChange : subscribeNothing,
    client ? () => client.state : fallback,
    client ? () => client.state : fallback,
  );
  // `closed` by a refusal: the error is on the client (a component mounted
  // later still sees it; `state` re-renders it).
  return { state, client, error: client?.error };
}

function subscribeNothing(): () => void {
  return noop;
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** `property.update` events of one organization (channel `property`), shared per tab. */
export function usePropertyEvents(
  organizationId: string | undefined,
  onEvent: (event: PropertyUpdateEvent) => void,
  options: Omit<UseRealtimeOptions, "channels" | "onEvent"> = {},
): UseRealtimeResult {
  const latest = useRef(onEvent);
  latest.current = onEvent;
  return useRealtime(organizationId, {
    ...options,
    channels: ["property"],
    onEvent: (event) => {
      if (event.type === "property.update") latest.current(event);
    },
  });
}
