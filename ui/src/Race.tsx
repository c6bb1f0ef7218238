// "Race": the same prompt decoded by AR and by Jacobi, timings side by side.

import { useState } from "preact/hooks";
import type { Generation } from "./types";

export interface RaceResult {
  ar: Generation;
  jacobi: Generation;
  speedup: number;
  identical: boolean;
}

export function RacePanel(props: {
  busy: boolean;
  running: { lane: string; ar: string; jacobi: string } | null;
  result: RaceResult | null;
  onRace: (prompt: string) => void;
}) {
  const [prompt, setPrompt] = useState("Explain in two sentences why the sky is blue.");
  const r = props.result;
  const lane = (name: "ar" | "jacobi", g: Generation | undefined, text: string) => (
    <div class="lane" data-testid={`race-${name}`}>
      <h3>{name === "ar" ? "AR: one token per pass" : "Jacobi"}</h3>
      <div class="numbers">
        {g
          ? `${g.tokens_per_second.toFixed(1)} tokens/s · ${g.forward_passes} passes · ${g.tokens_per_iteration.toFixed(2)} tokens/pass · ${(g.decode_ms / 1000).toFixed(2)} s`
          : props.running?.lane === name
            ? "running…"
            : ""}
      </div>
      <pre>{g ? g.text : text}</pre>
    </div>
  );
  return (
    <section class="race">
      <div class="race-input">
        <input value={prompt} onInput={(e) => setPrompt((e.target as HTMLInputElement).value)} />
        <button disabled={props.busy || !prompt.trim()} data-testid="race-start" onClick={() => props.onRace(prompt)}>
          Race AR vs Jacobi
        </button>
      </div>
      {r && (
        <div class="race-result" data-testid="race-result">
          Jacobi is {r.speedup.toFixed(2)}x AR's speed · outputs {r.identical ? "identical" : "differ"}
        </div>
      )}
      <div class="lanes">
        {lane("ar", r?.ar, props.running?.ar ?? "")}
        {lane("jacobi", r?.jacobi, props.running?.jacobi ?? "")}
      </div>
    </section>
  );
}
