import { defineConfig, type Plugin } from "vite";
import preact from "@preact/preset-vite";

// The bundle is same-origin, so it needs no `crossorigin`; without it, asset loads stay plain
// same-origin requests under the tauri:// scheme instead of CORS-mode ones.
const noCrossorigin = (): Plugin => ({
  name: "no-crossorigin",
  transformIndexHtml: (html) => html.replace(/ crossorigin/g, ""),
});

export default defineConfig({
  plugins: [preact(), noCrossorigin()],
  // Relative URLs: the bundle is served from tauri://localhost with no dev server.
  base: "./",
  build: { outDir: "dist", emptyOutDir: true, target: "es2021", sourcemap: false },
  test: { environment: "node" },
});
