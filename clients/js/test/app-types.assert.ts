/**
 * Type-level checks: our events (src/events.ts) against the original app's
 * own declarations (fixtures/oikion-app-events.ts), per event type. This
 * file has no runtime content; it passes when it compiles. It is compiled by
 * `npm run typecheck` (our strict settings) and by `test/app-types.test.ts`
 * (the app's settings: `strict: false, strictNullChecks: true`), both run by
 * `make test-js`.
 *
 * The promise is that an app handler typed with the app's declarations
 * accepts our events. Where a field of ours is wider than the app's, the
 * promise cannot hold at the type level, and the field is listed in `Gaps`
 * with the reason. For every event type:
 *
 * 1. everything but the listed gaps is assignable to the app's payload and
 *    envelope (so narrowing, say, `changeType` back to `string` fails here);
 * 2. every listed gap really is one (so fixing a gap, say making `updatedBy`
 *    a `string`, fails here until the list says so, and a gap field we drop
 *    fails as missing): the list stays exact;
 * 3. the literal unions the app switches on (`operation`, `changeType`) are
 *    the app's exactly, so a value it handles (say `archive`) cannot vanish.
 */

import type {
  BulkSyncPayload,
  DataSyncPayload,
  EventType,
  RealtimeEventMap,
  RoutedSyncPayload,
} from "../src/events.js";
import type * as App from "./fixtures/oikion-app-events.js";

/** `true` when every `A` is a `B` (not distributed over unions). */
type Assignable<A, B> = [A] extends [B] ? true : false;
/** Compiles only when `T` is `true`. */
type Holds<T extends true> = T;
/** Compiles only when `T` is `false` (not `boolean`: each member must fail). */
type Fails<T extends false> = T;

/**
 * The fields where ours is wider than the app's, per event type, and why.
 * Each is a deliberate consequence of the spec (ARCHITECTURE.md §6).
 */
interface Gaps {
  /**
   * `updatedBy`: `null` when the transaction named no actor (the app types it
   * `string`). `propertyId`: a number from a route over an integer key.
   */
  "property.update": "propertyId" | "updatedBy";
  /** `updatedBy`: `null` without an actor. `changes`: absent from a truncated event (over `REALTIME_MAX_EVENT_BYTES`). */
  "organization.change": "changes" | "updatedBy";
  /** `invitedBy`: `null` without an actor. `role`: any column value of a configurable route. */
  "member.join": "invitedBy" | "role";
  "member.leave": never;
  /** Column values of a configurable route (`null` when the row has none). */
  "user.activity": "action" | "metadata" | "resource" | "userId";
  /** Column values of a configurable route; `priority` is not limited to the app's four. */
  "notification.new": "category" | "message" | "metadata" | "priority" | "title";
  /** Free-form: whatever the application published (see the reverse check below). */
  "system.alert": "affectedUsers" | "alertType" | "message" | "metadata";
  /** Routed rows: `entityId` is a number from a route over an integer key; `data` is absent from a truncated event. */
  "data.sync": "data" | "entityId";
}

/** The envelope fields where ours is wider: the gateway's gap notice has no `id`. */
interface EnvelopeGaps {
  "property.update": never;
  "organization.change": never;
  "member.join": never;
  "member.leave": never;
  "user.activity": never;
  "notification.new": never;
  "system.alert": never;
  "data.sync": "id";
}

/** Our payload of `T`; for `data.sync` its routed shape (the signals are checked apart). */
type Ours<T extends EventType> = T extends "data.sync" ? RoutedSyncPayload : RealtimeEventMap[T]["payload"];
/** The app's payload of `T`, taken from its union by the discriminant. */
type Theirs<T extends EventType> = Extract<App.RealtimeEvent, { type: T }>["payload"];

/** 1. Everything but the gaps fits. */
type RestFits<T extends EventType> = Assignable<Omit<Ours<T>, Gaps[T]>, Omit<Theirs<T>, Gaps[T]>>;
/** 2. Each listed gap, alone, does not fit (`never`: nothing listed). */
type EachGapIsReal<T extends EventType> = [Gaps[T]] extends [never]
  ? false
  : {
      [K in Gaps[T]]: K extends keyof Ours<T>
        ? Assignable<Pick<Ours<T>, K>, Pick<Theirs<T>, K & keyof Theirs<T>>>
        : true; // a field we lack is no gap but a missing field
    }[Gaps[T]];
/** The same literal union on both sides (assignability alone accepts a narrower one). */
type Same<A, B> = Assignable<A, B> extends true ? Assignable<B, A> : false;

/** The envelope (every field but `payload`) fits, but for its gaps. */
type EnvelopeFits<T extends EventType> = Assignable<
  Omit<RealtimeEventMap[T], "payload" | EnvelopeGaps[T]>,
  Omit<Extract<App.RealtimeEvent, { type: T }>, "payload" | EnvelopeGaps[T]>
>;

// The same event types on both sides.
export type SameEventTypes = Holds<Assignable<EventType, App.AppEventType>>;
export type SameEventTypesBack = Holds<Assignable<App.AppEventType, EventType>>;

// property.update
export type PropertyUpdateFits = Holds<RestFits<"property.update">>;
export type PropertyUpdateGaps = Fails<EachGapIsReal<"property.update">>;
export type PropertyUpdateEnvelope = Holds<EnvelopeFits<"property.update">>;
// Every operation the app handles can arrive, `archive` included.
export type PropertyUpdateOperations = Holds<
  Same<Ours<"property.update">["operation"], Theirs<"property.update">["operation"]>
>;

// organization.change
export type OrganizationChangeFits = Holds<RestFits<"organization.change">>;
export type OrganizationChangeGaps = Fails<EachGapIsReal<"organization.change">>;
export type OrganizationChangeEnvelope = Holds<EnvelopeFits<"organization.change">>;
export type OrganizationChangeTypes = Holds<
  Same<Ours<"organization.change">["changeType"], Theirs<"organization.change">["changeType"]>
>;

// member.join
export type MemberJoinFits = Holds<RestFits<"member.join">>;
export type MemberJoinGaps = Fails<EachGapIsReal<"member.join">>;
export type MemberJoinEnvelope = Holds<EnvelopeFits<"member.join">>;

// member.leave: no gap, the whole payload fits.
export type MemberLeaveFits = Holds<Assignable<Ours<"member.leave">, Theirs<"member.leave">>>;
export type MemberLeaveEnvelope = Holds<EnvelopeFits<"member.leave">>;

// user.activity
export type UserActivityFits = Holds<RestFits<"user.activity">>;
export type UserActivityGaps = Fails<EachGapIsReal<"user.activity">>;
export type UserActivityEnvelope = Holds<EnvelopeFits<"user.activity">>;

// notification.new
export type NotificationNewFits = Holds<RestFits<"notification.new">>;
export type NotificationNewGaps = Fails<EachGapIsReal<"notification.new">>;
export type NotificationNewEnvelope = Holds<EnvelopeFits<"notification.new">>;

// system.alert: ours is free-form. An alert in the app's shape is one of
// ours, so the app can publish its alerts as they are. (As an object type:
// a value typed with the app's *interface* is not, since TypeScript gives
// interfaces no implicit index signature for `Record<string, unknown>`.)
export type SystemAlertFits = Holds<RestFits<"system.alert">>;
export type SystemAlertGaps = Fails<EachGapIsReal<"system.alert">>;
type AppAlertObject = { [K in keyof Theirs<"system.alert">]: Theirs<"system.alert">[K] };
export type SystemAlertReverse = Holds<Assignable<AppAlertObject, Ours<"system.alert">>>;
export type SystemAlertEnvelope = Holds<EnvelopeFits<"system.alert">>;

// data.sync: the routed shape is the app's (but for entityId) and is one of
// our payloads; the gateway's and ingestor's own signals (truncate, gap,
// slot lost) are the documented superset the app's type does not describe,
// each member of it on its own.
export type DataSyncFits = Holds<RestFits<"data.sync">>;
export type DataSyncGaps = Fails<EachGapIsReal<"data.sync">>;
export type DataSyncRoutedIsOurs = Holds<Assignable<RoutedSyncPayload, DataSyncPayload>>;
export type DataSyncOperations = Holds<Same<Ours<"data.sync">["operation"], Theirs<"data.sync">["operation"]>>;
type Signal = Exclude<DataSyncPayload, RoutedSyncPayload>;
export type DataSyncSignalsAreTheSuperset = Fails<
  Signal extends unknown ? Assignable<Signal, Theirs<"data.sync">> : never
>;
// The ingestor's bulk signal is one of our data.sync payloads (so
// `onResync` and `on("data.sync")` handlers receive it typed), and, like the
// other signals, not the app's routed shape: it has no `entityId`/`data`.
export type DataSyncBulkIsOurs = Holds<Assignable<BulkSyncPayload, DataSyncPayload>>;
export type DataSyncBulkIsASignal = Holds<Assignable<BulkSyncPayload, Signal>>;
export type DataSyncBulkIsNotRouted = Fails<Assignable<BulkSyncPayload, Theirs<"data.sync">>>;
export type DataSyncEnvelope = Holds<EnvelopeFits<"data.sync">>;
export type DataSyncEnvelopeGap = Fails<
  Assignable<Pick<RealtimeEventMap["data.sync"], "id">, Pick<App.DataSyncEvent, "id">>
>;

// The hook's own event type (hooks/use-property-events.ts): our
// property.update, gaps aside, is what its `onEvent` receives.
export type HookEventFits = Holds<
  Assignable<
    Omit<RealtimeEventMap["property.update"], "payload"> & {
      payload: Omit<Ours<"property.update">, Gaps["property.update"]>;
    },
    Omit<App.HookRealtimeEvent, "payload"> & {
      payload: Omit<App.AppPropertyUpdatePayload, Gaps["property.update"]>;
    }
  >
>;
