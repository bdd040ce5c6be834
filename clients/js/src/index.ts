/**
 * `@oikion/realtime`: the browser client of the realtime gateway.
 *
 * `connect()` opens one organization's event stream; React hooks live in
 * `@oikion/realtime/react`. See README.md.
 */

export {
  type ConnectOptions,
  type ConnectionState,
  connect,
  DEFAULT_PAUSE_AFTER_MS,
  type EventSourceConstructor,
  type EventSourceLike,
  isAfter,
  parseEventId,
  type RealtimeClient,
  type RealtimeError,
  STREAM_PATH,
  storageKey,
  streamUrl,
  type Unsubscribe,
  type VisibilitySource,
} from "./client.js";
export * from "./events.js";
