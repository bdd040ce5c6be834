/**
 * The gateway's wire format (ARCHITECTURE.md §3, §6) as TypeScript types.
 *
 * These definitions are checked against `schema/events.json`, which the Rust
 * test `tests/tests/client_js.rs` writes from what the real ingestor and
 * gateway produce: `test/schema.test.ts` fails when a type, a channel, an
 * event field or a payload field differs (name or optionality). Change the Rust
 * side first, regenerate the file, then this one.
 *
 * The payloads follow the original Oikion app's own declarations (its
 * `src/realtime/types/realtime.ts`), so an app handler typed with those
 * accepts these events: `test/app-types.test.ts` compiles each payload
 * against a reconstruction of them (`test/fixtures/oikion-app-events.ts`) and
 * lists the few fields that are wider here (a `null` actor, column values of
 * configurable routes, the gateway's own `data.sync` signals, free-form
 * `system.alert`).
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

/**
 * A row, or the changed fields of a row, keyed by the app's field name: the
 * route's column renames applied (the built-in Oikion routes turn the Prisma
 * `@map` columns back into `createdAt`, `updatedAt`, `joinedAt`, `uploadedAt`,
 * `stripeCustomerId`, …; other columns keep their own names).
 */
export type Row = Record<string, ColumnValue>;

/**
 * Set on an event that was larger than the ingestor's
 * `REALTIME_MAX_EVENT_BYTES` (64 KiB by default): it keeps its ids and keys
 * (and `updatedFields`) but not the row values (`changes`, `data`; for an
 * activity or notification also `metadata`), and a single value larger than
 * the limit anywhere else is `null`. Refetch the entity.
 */
export type Truncated = true;

/**
 * The acting user of the transaction that made the change: the id the app
 * passed to `SELECT realtime.set_actor(<userId>)` in that transaction, or
 * `null` when it named none (a property route with `updated_by_column` gives
 * that column's value instead; the built-in routes have none). The key is
 * always present. (The app's own declarations type it `string`; `null` is the
 * one value they do not foresee.)
 */
export type Actor = string | null;

/**
 * A property was created, updated, archived or deleted: a `properties` row
 * changed, or a row of one of its child tables (`listings`, `addresses`,
 * `media_assets`), which is routed through its parent property.
 */
export interface PropertyUpdatePayload {
  /** The property's id (for a child row: its `propertyId`). A number only from routes over integer keys. */
  propertyId: string | number;
  /** The property's organization (for a child row: its parent property's, looked up by the ingestor). */
  organizationId: string;
  /**
   * `archive`: a listing's `marketingStatus` became `ARCHIVED` (the app's
   * `archiveProperty()`); a child row's other changes are `update`s.
   */
  operation: "create" | "update" | "archive" | "delete";
  /**
   * Changed field names, sorted; updates and archives only. A child row's
   * fields are prefixed with its field on the property: `listing.archivedAt`.
   */
  updatedFields?: string[];
  /**
   * Create: the whole new row. Update and archive: the changed fields' new
   * values. Delete: the old row. A child row's fields are nested under its
   * field on the property (`listing`, `address`, `mediaAssets`):
   * `{"listing": {"marketingStatus": "ARCHIVED", "archivedAt": "…"}}`.
   * Absent when the event was {@link Truncated}.
   */
  changes?: Row;
  /** Who made the change (see {@link Actor}). */
  updatedBy: Actor;
  truncated?: Truncated;
}

/** An organization row changed. */
export interface OrganizationChangePayload {
  organizationId: string;
  /**
   * With the built-in routes: `name` when only the name changed, `billing`
   * when only the plan changed, else `settings` (several fields, or any other
   * one). `permissions` is in the app's union; no built-in route produces it.
   * A routes file's `change_types` / `default_change_type` name these values
   * and must keep to the four for this type to hold.
   */
  changeType: "name" | "settings" | "permissions" | "billing";
  /** The changed fields' new values. Absent when the event was {@link Truncated}. */
  changes?: Row;
  /** Who made the change (see {@link Actor}). */
  updatedBy: Actor;
  truncated?: Truncated;
}

/** A membership was created or its role changed. */
export interface MemberJoinPayload {
  /** The member's user id. */
  memberId: string;
  organizationId: string;
  role: ColumnValue;
  /** Who added the member or changed the role (see {@link Actor}). */
  invitedBy: Actor;
}

/** A membership was removed: that user's streams of the organization close. */
export interface MemberLeavePayload {
  memberId: string;
  organizationId: string;
  // No `reason` (optional in the app's type): a removed row has none to give,
  // and the ingestor's `"unknown"` leave (a membership table without REPLICA
  // IDENTITY FULL) is consumed by the gateway and never reaches a browser.
}

/** An `activities` row was inserted. */
export interface UserActivityPayload {
  /** The actor's user id (null when the row has none). */
  userId: ColumnValue;
  action: ColumnValue;
  resource: ColumnValue;
  resourceId?: ColumnValue;
  /** Absent when the event was {@link Truncated}. */
  metadata?: ColumnValue;
  truncated?: Truncated;
}

/** A notification for the current user (only its addressee receives it). */
export interface NotificationNewPayload {
  userId: string;
  title: ColumnValue;
  message: ColumnValue;
  priority: ColumnValue;
  category: ColumnValue;
  metadata?: ColumnValue;
  truncated?: Truncated;
}

/** Whatever the application published (`POST /api/realtime/publish` or `pg_logical_emit_message`). */
export type SystemAlertPayload = Record<string, unknown>;

/**
 * A row of a `data.sync` route changed (the Oikion routes: `clients` →
 * `client`, `tasks` → `task`, `notes` → `note`, `interactions` →
 * `interaction`; notes and interactions belong to the organization of their
 * client or property). This is the app's own `data.sync` shape.
 */
export interface RoutedSyncPayload {
  entityType: string;
  /** The row's id. A number only from routes over integer keys. */
  entityId: string | number;
  operation: "create" | "update" | "delete";
  /** Create and update: the new row. Delete: the old row. Absent when the event was {@link Truncated}. */
  data?: Row;
  truncated?: Truncated;
}

/** A routed table was truncated: every organization should refetch that entity. */
export interface TruncateSyncPayload {
  entityType: string;
  operation: "truncate";
}

/**
 * One transaction changed more rows of one table of this organization than
 * the ingestor's `REALTIME_BULK_THRESHOLD` (1,000 by default): instead of
 * one event per row, this one; refetch that entity (`entityType` is the
 * table's name, as for a truncate). Membership changes are never coalesced.
 */
export interface BulkSyncPayload {
  entityType: string;
  operation: "bulk";
  /** How many events it stands for. */
  count: number;
}

/** The resume point is older than the retained history: refetch, then carry on live. */
export interface GapSyncPayload {
  reason: "gap";
  /** The id the client asked to resume after. */
  lastEventId: string | null;
}

/**
 * The replication slot was lost or invalidated, so changes may be missing:
 * sent to every organization; refetch.
 */
export interface SlotLostSyncPayload {
  reason: "slot_lost";
}

/**
 * `data.sync`: the app's routed shape, or one of the gateway's and ingestor's
 * own signals to refetch (truncate, bulk, gap, slot lost). Those signals are a
 * superset of the app's `data.sync` payload: they lack `entityId` and `data`
 * (and the gap notice an event `id`), so code typed with the app's
 * declarations must not read those fields without checking `reason` /
 * `operation` first. Narrow on `"reason" in payload` or on `operation`.
 */
export type DataSyncPayload =
  | RoutedSyncPayload
  | TruncateSyncPayload
  | BulkSyncPayload
  | GapSyncPayload
  | SlotLostSyncPayload;

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
