import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { describe, expect, it } from "vitest";

const read = (path: string) => readFileSync(fileURLToPath(new URL(path, import.meta.url)), "utf8");

describe("README", () => {
  it("shows examples/basic.ts verbatim, the code the end-to-end test runs", () => {
    const readme = read("../README.md");
    const marker = "<!-- example: examples/basic.ts -->\n```ts\n";
    const start = readme.indexOf(marker);
    expect(start, "the README marks the example block").toBeGreaterThanOrEqual(0);
    const body = readme.slice(start + marker.length);
    const block = body.slice(0, body.indexOf("```\n"));
    expect(block).toBe(read("../examples/basic.ts"));
  });
});
