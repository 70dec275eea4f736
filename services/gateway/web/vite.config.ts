/// <reference types="vitest/config" />
import { fileURLToPath, URL } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// The gateway serves dist/ at / (same origin as /api); `npm run dev` proxies the API to a
// running gateway (INFLAB_GATEWAY_URL, default the embedded stack's).
const gateway = process.env.INFLAB_GATEWAY_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  resolve: { alias: { "@": fileURLToPath(new URL("./src", import.meta.url)) } },
  server: { proxy: { "/api": { target: gateway, changeOrigin: false } } },
  build: {
    sourcemap: true,
    // Fonts and icons as files, never data: URLs, so the page's CSP can stay font-src 'self'.
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 700,
  },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts", "src/**/*.test.tsx"],
  },
});
