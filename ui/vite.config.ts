import { defineConfig, type Plugin } from "vite";
import preact from "@preact/preset-vite";

// WebKitGTK fetches `crossorigin` module scripts in CORS mode, which Tauri's tauri:// scheme
// does not satisfy: the script never runs. Same-origin bundles need no such attribute.
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
