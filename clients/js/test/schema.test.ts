/**
 * The TypeScript definitions (src/events.ts) against schema/events.json, the
 * description the Rust test `tests/tests/client_js.rs` writes from what the
 * real ingestor and gateway produce. Any difference in event types, channels,
 * event fields, payload fields or the connection message fails here; the Rust
 * test fails when the file no longer matches Rust. Optionality is compared by
 * the same rule on both sides: over a union (TS) or a set of samples (Rust),
 * a field is required when every member has it and is not optional there.
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import ts from "typescript";
import { describe, expect, it } from "vitest";

import { CHANNELS, EVENT_TYPES } from "../src/events.js";

type Fields = Record<string, "required" | "optional">;

interface Description {
  eventTypes: string[];
  channels: Record<string, string[]>;
  connection: Fields;
  events: Record<string, { fields: Fields; payload: Fields | "any" }>;
}

const schemaPath = fileURLToPath(new URL("../schema/events.json", import.meta.url));
const eventsPath = fileURLToPath(new URL("../src/events.ts", import.meta.url));
const described = JSON.parse(readFileSync(schemaPath, "utf8")) as Description;

const program = ts.createProgram([eventsPath], { strict: true, noEmit: true, skipLibCheck: true });
const checker = program.getTypeChecker();
const source = program.getSourceFile(eventsPath);
if (!source) throw new Error(`cannot load ${eventsPath}`);
const moduleSymbol = checker.getSymbolAtLocation(source);
if (!moduleSymbol) throw new Error("src/events.ts is not a module");
const exported = new Map(checker.getExportsOfModule(moduleSymbol).map((s) => [s.name, s]));

function exportedType(name: string): ts.Type {
  const symbol = exported.get(name);
  if (!symbol) throw new Error(`src/events.ts does not export ${name}`);
  return checker.getDeclaredTypeOfSymbol(symbol);
}

/** Field names and optionality of an object type, merged over a union's members. */
function fieldsOf(type: ts.Type): Fields {
  const members = type.isUnion() ? type.types : [type];
  const perMember = members.map((member) => {
    const out = new Map<string, boolean>();
    for (const prop of checker.getPropertiesOfType(member)) {
      out.set(prop.name, (prop.flags & ts.SymbolFlags.Optional) !== 0);
    }
    return out;
  });
  const names = new Set(perMember.flatMap((m) => [...m.keys()]));
  const fields: Fields = {};
  for (const name of [...names].sort()) {
    const required = perMember.every((m) => m.has(name) && m.get(name) === false);
    fields[name] = required ? "required" : "optional";
  }
  return fields;
}

/** `"any"` for a free-form record (`Record<string, unknown>`), else its fields. */
function payloadOf(type: ts.Type): Fields | "any" {
  const isFreeForm =
    checker.getIndexInfosOfType(type).length > 0 && checker.getPropertiesOfType(type).length === 0;
  return isFreeForm ? "any" : fieldsOf(type);
}

function propertyType(type: ts.Type, name: string): ts.Type {
  const prop = checker.getPropertyOfType(type, name);
  if (!prop) throw new Error(`${checker.typeToString(type)} has no ${name}`);
  return checker.getTypeOfSymbol(prop);
}

describe("TypeScript events match the Rust side (schema/events.json)", () => {
  it("lists the same event types, in the same order", () => {
    expect([...EVENT_TYPES]).toEqual(described.eventTypes);
    const mapKeys = checker.getPropertiesOfType(exportedType("RealtimeEventMap")).map((p) => p.name);
    expect(mapKeys.sort()).toEqual([...described.eventTypes].sort());
  });

  it("has the same channel filters", () => {
    const channels = Object.fromEntries(Object.entries(CHANNELS).map(([k, v]) => [k, [...v]]));
    expect(channels).toEqual(described.channels);
  });

  it("types the connection message's fields", () => {
    expect(fieldsOf(exportedType("ConnectionMessage"))).toEqual(described.connection);
  });

  for (const type of described.eventTypes) {
    it(`types ${type}: its event fields and payload fields`, () => {
      const eventType = propertyType(exportedType("RealtimeEventMap"), type);
      const want = described.events[type];
      expect(want, `schema/events.json describes ${type}`).toBeDefined();
      expect(fieldsOf(eventType)).toEqual(want?.fields);
      expect(payloadOf(propertyType(eventType, "payload"))).toEqual(want?.payload);
      // The discriminant: `type` is exactly this literal.
      expect(checker.typeToString(propertyType(eventType, "type"))).toBe(JSON.stringify(type));
    });
  }

  it("notices a difference (the checker itself is not vacuous)", () => {
    // A payload missing a field and one with an extra optional field differ.
    const wanted = described.events["property.update"]?.payload as Fields;
    const actual = fieldsOf(propertyType(propertyType(exportedType("RealtimeEventMap"), "property.update"), "payload"));
    const { changes: _dropped, ...fewer } = actual;
    expect(fewer).not.toEqual(wanted);
    expect({ ...actual, extra: "optional" }).not.toEqual(wanted);
  });
});
