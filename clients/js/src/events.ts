/**
 * The gateway's wire format (DESIGN §3, §6) as TypeScript types.
 *
 * These definitions are checked against `schema/events.json`, which the Rust
 * test `tests/tests/client_js.rs` writes from what the real ingestor and
 * gateway produce: `test/schema.test.ts` fails when a type, a channel, an
 * event field or a payload field differs (name or optionality). Change the Rust
 * side first, regenerate the file, then this one.
 */

/** Every event type, in the order of the Rust `EventType::ALL`. */
export const EVENT_TYPES = [
  "property.update",
  "organization.change",
  "member.join",
  "member.leave",
  "user.activity",
  "notification.new",
  "system.alert",
  "data.sync",
] as const;

export type EventType = (typeof EVENT_TYPES)[number];

/**
 * The gateway's channel filters (`?channel=a,b`): which event types each one
 * lets through. `data.sync` and the connection message always pass; no
 * channel (or `all`) means every type.
 */
export const CHANNELS = {
  property: ["property.update"],
  organization: ["organization.change", "member.join", "member.leave"],
  user: ["user.activity"],
  notifications: ["notification.new"],
  system: ["system.alert"],
} as const satisfies Record<string, readonly EventType[]>;

export type Channel = keyof typeof CHANNELS | "all";

/** A column value as the ingestor encodes it (numeric as a string, timestamps as ISO-8601). */
export type ColumnValue = string | number | boolean | null | ColumnValue[] | { [key: string]: unknown };

/** A row, or the changed columns of a row, keyed by column name. */
export type Row = Record<string, ColumnValue>;

/** A `properties` row was created, updated or deleted. */
export interface PropertyUpdatePayload {
  propertyId: string | number;
  organizationId: string;
  operation: "create" | "update" | "delete";
  /** Changed column names, sorted; updates only. */
  updatedFields?: string[];
  /** Create: the whole new row. Update: the changed columns' new values. Delete: the old row. */
  changes: Row;
  /** The configured `updated_by_column`'s value, when set and not null (not on deletes). */
  updatedBy?: ColumnValue;
}

/** An organization row changed. */
export interface OrganizationChangePayload {
  organizationId: string;
  /** The one watched column that changed (`name`, `plan`, `settings`), else `"update"`. */
  changeType: string;
  changes: Row;
}

/** A membership was created or its role changed. */
export interface MemberJoinPayload {
  /** The member's user id. */
  memberId: string;
  organizationId: string;
  role: ColumnValue;
}

/** A membership was removed: that user's streams of the organization close. */
export interface MemberLeavePayload {
  memberId: string;
  organizationId: string;
}

/** An `activities` row was inserted. */
export interface UserActivityPayload {
  /** The actor's user id (null when the row has none). */
  userId: ColumnValue;
  action: ColumnValue;
  resource: ColumnValue;
  resourceId?: ColumnValue;
  metadata: ColumnValue;
}

/** A notification for the current user (only its addressee receives it). */
export interface NotificationNewPayload {
  userId: string;
  title: ColumnValue;
  message: ColumnValue;
  priority: ColumnValue;
  category: ColumnValue;
  metadata?: ColumnValue;
}

/** Whatever the application published (`POST /api/realtime/publish` or `pg_logical_emit_message`). */
export type SystemAlertPayload = Record<string, unknown>;

/** A routed table was truncated: every organization should refetch that entity. */
export interface TruncateSyncPayload {
  entityType: string;
  operation: "truncate";
}

/** The resume point is older than the retained history: refetch, then carry on live. */
export interface GapSyncPayload {
  reason: "gap";
  /** The id the client asked to resume after. */
  lastEventId: string | null;
}

export type DataSyncPayload = TruncateSyncPayload | GapSyncPayload;

/** The fields every event shares. */
interface EventBase<T extends EventType, P> {
  /** `<commit LSN>-<index>`: increases in commit order; the resume point. */
  id: string;
  type: T;
  /** Commit time, milliseconds since the Unix epoch. */
  timestamp: number;
  source: "postgres" | "api";
  version: "1.0";
  /** `null` for a broadcast to every organization. */
  organizationId: string | null;
  payload: P;
}

/** Each event type's full shape. */
export interface RealtimeEventMap {
  "property.update": EventBase<"property.update", PropertyUpdatePayload>;
  "organization.change": EventBase<"organization.change", OrganizationChangePayload>;
  "member.join": EventBase<"member.join", MemberJoinPayload>;
  "member.leave": EventBase<"member.leave", MemberLeavePayload>;
  "user.activity": EventBase<"user.activity", UserActivityPayload>;
  "notification.new": EventBase<"notification.new", NotificationNewPayload>;
  "system.alert": EventBase<"system.alert", SystemAlertPayload>;
  /** The gateway's own gap notice carries no id (it is not part of the history). */
  "data.sync": Omit<EventBase<"data.sync", DataSyncPayload>, "id"> & { id?: string };
}

/** Any event: a discriminated union on `type` (narrowing `type` narrows `payload`). */
export type RealtimeEvent = RealtimeEventMap[EventType];

export type PropertyUpdateEvent = RealtimeEventMap["property.update"];
export type DataSyncEvent = RealtimeEventMap["data.sync"];

/** The first message of every stream. */
export interface ConnectionMessage {
  type: "connection";
  status: "connected";
  timestamp: number;
  organizationId: string;
  organizationName: string;
  /** The channel filter as the server understood it (`all` when none). */
  channel: string;
  userId: string;
  /** Names this stream in `PUT`/`DELETE /api/realtime/stream?connectionId=`. */
  connectionId: string;
}

/** Whether `value` is one of the known event types. */
export function isEventType(value: unknown): value is EventType {
  return typeof value === "string" && (EVENT_TYPES as readonly string[]).includes(value);
}
