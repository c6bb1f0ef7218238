// Jacobi iterations -> visualizer rows. Pure functions, so live streaming and replay share them
// and vitest covers them.

import type { IterationView } from "../types";

/**
 * A cell of a row (the block after one pass):
 * - prior:    position 0, already part of the answer before this pass
 * - accepted: confirmed by this pass (joins the answer now)
 * - final:    already at its final value, not yet accepted (a "stationary" token)
 * - changing: not at its final value yet (or not known yet while streaming)
 */
export type CellState = "prior" | "accepted" | "final" | "changing";

export interface Cell {
  text: string;
  state: CellState;
}

export interface Row {
  index: number;
  accepted: number;
  ms: number;
  /** Length of the context match the pass's guesses were copied after; 0: the model's own. */
  contextMatch: number;
  cells: Cell[];
}

/** Everything the visualizer draws, built event by event. */
export interface VizState {
  iterations: IterationView[];
  /** Token ids of the answer so far (from the text events, prefill token first). */
  answer: number[];
  /** Generated tokens after the prefill token, and the time their passes took. */
  tokens: number;
  ms: number;
  /** Passes whose guesses were copied from the context. */
  contextPasses: number;
  /** Per iteration: tokens it added, and running tokens/s. */
  tokensPerIteration: number[];
  tokensPerSecond: number[];
}

export const emptyViz = (): VizState => ({
  iterations: [],
  answer: [],
  tokens: 0,
  ms: 0,
  contextPasses: 0,
  tokensPerIteration: [],
  tokensPerSecond: [],
});

export type VizInput =
  | { kind: "iteration"; iteration: IterationView }
  | { kind: "tokens"; ids: number[] };

/** Applies a batch of inputs in order (one call per animation frame). */
export function reduce(state: VizState, inputs: VizInput[]): VizState {
  if (inputs.length === 0) return state;
  const next: VizState = {
    iterations: state.iterations.slice(),
    answer: state.answer.slice(),
    tokens: state.tokens,
    ms: state.ms,
    contextPasses: state.contextPasses,
    tokensPerIteration: state.tokensPerIteration.slice(),
    tokensPerSecond: state.tokensPerSecond.slice(),
  };
  for (const input of inputs) {
    if (input.kind === "tokens") {
      next.answer.push(...input.ids);
      continue;
    }
    const it = input.iteration;
    if (it.index !== next.iterations.length) {
      throw new Error(`iteration ${it.index} arrived after ${next.iterations.length - 1}`);
    }
    next.iterations.push(it);
    next.tokens += it.new_tokens;
    next.ms += it.ms;
    if ((it.context_match ?? 0) > 0) next.contextPasses += 1;
    next.tokensPerIteration.push(it.new_tokens);
    next.tokensPerSecond.push(next.ms > 0 ? (next.tokens * 1000) / next.ms : 0);
  }
  return next;
}

/** The states of a row's cells, given the answer's token ids known so far. */
export function cellStates(it: IterationView, answer: number[]): CellState[] {
  return it.after_ids.map((id, i) => {
    if (i === 0) return "prior";
    if (i <= it.accepted) return "accepted";
    const at = it.block_start + i;
    if (at < answer.length) return answer[at] === id ? "final" : "changing";
    return "changing";
  });
}

export function row(it: IterationView, answer: number[]): Row {
  const states = cellStates(it, answer);
  return {
    index: it.index,
    accepted: it.new_tokens,
    ms: it.ms,
    contextMatch: it.context_match ?? 0,
    cells: it.after.map((text, i) => ({ text, state: states[i] })),
  };
}

/** The rows to draw: the last `limit` iterations up to `upTo` (replay position). */
export function visibleRows(state: VizState, upTo: number, limit: number): Row[] {
  const end = Math.min(upTo, state.iterations.length);
  const start = Math.max(0, end - limit);
  return state.iterations.slice(start, end).map((it) => row(it, state.answer));
}

/** A finished answer's state, for replay: all iterations and the full answer. */
export function replayState(iterations: IterationView[], tokenIds: number[]): VizState {
  const s = reduce(
    emptyViz(),
    iterations.map((iteration) => ({ kind: "iteration" as const, iteration })),
  );
  return { ...s, answer: tokenIds.slice() };
}

/** Jacobi tokens/s against AR tokens/s on the same model, if AR has been measured. */
export function speedup(state: VizState, arTokensPerSecond: number | null): number | null {
  if (!arTokensPerSecond || state.ms <= 0) return null;
  return (state.tokens * 1000) / state.ms / arTokensPerSecond;
}
