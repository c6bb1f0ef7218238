// The live view of Jacobi decoding: one row per iteration (the block after the pass, cells
// coloured by state), charts of tokens per iteration and tokens/s, the speedup against AR, and
// a scrubber to replay a finished answer iteration by iteration.

import { useEffect, useRef, useState } from "preact/hooks";
import { speedup, visibleRows, type VizState } from "./reduce";
import { LineChart } from "./Chart";

const WINDOW = 200;

export function Visualizer(props: {
  viz: VizState;
  live: boolean;
  arTokensPerSecond: number | null;
  title: string;
}) {
  const { viz } = props;
  const total = viz.iterations.length;
  // Replay position; null follows the latest iteration.
  const [at, setAt] = useState<number | null>(null);
  useEffect(() => setAt(null), [props.title]);
  const upTo = at ?? total;
  const rows = visibleRows(viz, upTo, WINDOW);
  const tpi = total > 0 ? viz.tokens / total : 0;
  const tps = viz.ms > 0 ? (viz.tokens * 1000) / viz.ms : 0;
  const s = speedup(viz, props.arTokensPerSecond);
  // While live, keep the newest row in view.
  const list = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (props.live && list.current) list.current.scrollTop = list.current.scrollHeight;
  }, [total, props.live]);

  return (
    <section class="visualizer" data-testid="visualizer" data-iterations={total}>
      <header>
        <h2>Jacobi iterations {props.live && <span class="live">live</span>}</h2>
        <div class="title">{props.title}</div>
      </header>
      <div class="stats">
        <span data-testid="viz-passes">{total} passes</span>
        <span>{viz.tokens} tokens</span>
        <span>{tpi.toFixed(2)} tokens/pass</span>
        <span>{tps.toFixed(1)} tokens/s</span>
        <span data-testid="viz-context" title="passes whose guesses were copied from an earlier occurrence of the last tokens">
          {viz.contextPasses} guessed from context
        </span>
        <span data-testid="viz-speedup">
          {s === null
            ? "speedup: run a race or an AR answer to measure AR"
            : `${s.toFixed(2)}x vs AR (${props.arTokensPerSecond!.toFixed(1)} tokens/s)`}
        </span>
      </div>
      <div class="legend">
        <span class="cell prior">known</span>
        <span class="cell accepted">accepted this pass</span>
        <span class="cell final">final, not yet accepted</span>
        <span class="cell changing">still changing</span>
      </div>
      <div class="charts">
        <LineChart title="tokens per pass" values={viz.tokensPerIteration} color="#2e7dd7" testid="chart-tpi" />
        <LineChart title="tokens/s" values={viz.tokensPerSecond} color="#d7522e" testid="chart-tps" />
      </div>
      {!props.live && total > 0 && (
        <label class="scrub">
          replay
          <input
            type="range"
            min={1}
            max={total}
            value={upTo}
            data-testid="replay"
            onInput={(e) => setAt(Number((e.target as HTMLInputElement).value))}
          />
          <span>
            {upTo} / {total}
          </span>
        </label>
      )}
      {upTo > WINDOW && <div class="earlier">{upTo - WINDOW} earlier iterations not drawn</div>}
      <div class="rows" data-testid="viz-rows" ref={list}>
        {rows.map((r) => (
          <div class="row" key={r.index} data-testid="viz-row">
            <span class="idx">{r.index + 1}</span>
            <span
              class="src"
              title={
                r.contextMatch > 0
                  ? `guesses copied from what followed an earlier occurrence of the last ${r.contextMatch} token(s)`
                  : "the model's own guesses"
              }
            >
              {r.contextMatch > 0 ? `ctx ${r.contextMatch}` : ""}
            </span>
            <span class="cells">
              {r.cells.map((c, i) => (
                <span key={i} class={`cell ${c.state}`} title={c.state}>
                  {visible(c.text)}
                </span>
              ))}
            </span>
            <span class="acc">+{r.accepted}</span>
          </div>
        ))}
      </div>
    </section>
  );
}

/** Whitespace made visible in a token cell. */
function visible(text: string): string {
  return text.replace(/\n/g, "⏎").replace(/ /g, "·") || "∅";
}
