import { fileURLToPath } from "node:url";

import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    alias: {
      "@oikion/realtime/server": fileURLToPath(new URL("./src/server.ts", import.meta.url)),
      "@oikion/realtime/react": fileURLToPath(new URL("./src/react.ts", import.meta.url)),
      "@oikion/realtime": fileURLToPath(new URL("./src/index.ts", import.meta.url)),
    },
  },
  test: {
    include: ["test/**/*.test.ts", "test/**/*.test.tsx"],
    environment: "node",
  },
});
