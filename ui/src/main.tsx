import { render } from "preact";
import { App } from "./App";
import "./style.css";

const root = document.getElementById("app")!;
try {
  render(<App />, root);
} catch (e) {
  // A broken build or runtime should say so instead of showing a blank window.
  root.textContent = `Fixpoint failed to start: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
}
document.body.dataset.booted = "1";
