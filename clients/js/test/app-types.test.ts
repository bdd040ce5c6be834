/**
 * Runs the type-level checks of `app-types.assert.ts` (our events against the
 * original app's declarations, per event type) with the TypeScript compiler:
 * under the app's own settings (`strict: false, strictNullChecks: true`, from
 * its tsconfig.json) and under ours (strict). `npm run typecheck` compiles the
 * file too; running it here makes `npm test` alone fail as well, and shows
 * that the checks are not vacuous: a copy of src/events.ts with one field
 * broken, or one gap fixed without saying so, must not compile.
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import ts from "typescript";
import { describe, expect, it } from "vitest";

const assertPath = fileURLToPath(new URL("./app-types.assert.ts", import.meta.url));
const eventsPath = fileURLToPath(new URL("../src/events.ts", import.meta.url));
const eventsText = readFileSync(eventsPath, "utf8");

const common: ts.CompilerOptions = {
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2020,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  types: [],
};
/** The app's tsconfig.json: `strict: false` with `strictNullChecks: true`. */
const appOptions: ts.CompilerOptions = { ...common, strict: false, strictNullChecks: true };
const ourOptions: ts.CompilerOptions = { ...common, strict: true };

/** The errors of compiling the checks, with src/events.ts replaced by `events` when given. */
function errors(options: ts.CompilerOptions, events?: string): string[] {
  const host = ts.createCompilerHost(options);
  if (events !== undefined) {
    const getSourceFile = host.getSourceFile.bind(host);
    host.getSourceFile = (fileName, language, onError, fresh) =>
      fileName === eventsPath
        ? ts.createSourceFile(fileName, events, language)
        : getSourceFile(fileName, language, onError, fresh);
    const readFile = host.readFile.bind(host);
    host.readFile = (fileName) => (fileName === eventsPath ? events : readFile(fileName));
  }
  const program = ts.createProgram([assertPath], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
    const file = d.file ? d.file.fileName.replace(/.*\/clients\/js\//, "") : "";
    const at = where ? `${file}:${where.line + 1}` : file;
    return `${at}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
  });
}

/** src/events.ts with `from` (which must occur once) replaced by `to`. */
function edited(from: string, to: string): string {
  expect(eventsText.split(from).length - 1, `src/events.ts contains ${JSON.stringify(from)} once`).toBe(1);
  return eventsText.replace(from, to);
}

describe("our events against the original app's declarations", () => {
  it("fit them under the app's compiler settings (strictNullChecks)", () => {
    expect(errors(appOptions)).toEqual([]);
  });

  it("fit them under our strict settings", () => {
    expect(errors(ourOptions)).toEqual([]);
  });

  // Each edit must make the checks fail (under the app's settings), at a line
  // of app-types.assert.ts: the checks see each field, and the gap list is exact.
  const breaks: [string, string, string][] = [
    [
      "changeType widened to string",
      `changeType: "name" | "settings" | "permissions" | "billing";`,
      "changeType: string;",
    ],
    [
      "property operation without archive",
      `operation: "create" | "update" | "archive" | "delete";`,
      `operation: "create" | "update" | "delete";`,
    ],
    ["invitedBy dropped", "  invitedBy: Actor;\n", ""],
    [
      "member.leave memberId widened",
      "export interface MemberLeavePayload {\n  memberId: string;",
      "export interface MemberLeavePayload {\n  memberId: string | number;",
    ],
    [
      "routed data.sync operation widened",
      `  operation: "create" | "update" | "delete";\n  /** Create and update: the new row.`,
      `  operation: "create" | "update" | "delete" | "truncate";\n  /** Create and update: the new row.`,
    ],
    ["an event's timestamp as a string", "  timestamp: number;\n  source:", "  timestamp: string;\n  source:"],
    // A gap closed without updating the list is a failure too.
    ["the null actor gap closed", "export type Actor = string | null;", "export type Actor = string;"],
  ];
  for (const [what, from, to] of breaks) {
    it(`notice ${what}`, () => {
      const found = errors(appOptions, edited(from, to));
      expect(found.length, "the broken copy compiles").toBeGreaterThan(0);
      expect(found.every((e) => e.startsWith("test/app-types.assert.ts:")), found.join("\n")).toBe(true);
    });
  }
});
