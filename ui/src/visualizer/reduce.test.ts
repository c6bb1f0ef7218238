import { describe, expect, it } from "vitest";
import { cellStates, emptyViz, reduce, replayState, speedup, visibleRows } from "./reduce";
import { FrameBatcher } from "../batch";
import type { IterationView } from "../types";

const iter = (
  index: number,
  block_start: number,
  after_ids: number[],
  accepted: number,
  ms = 10,
): IterationView => ({
  index,
  block_start,
  before: after_ids.map(String),
  after: after_ids.map(String),
  before_ids: after_ids,
  after_ids,
  accepted,
  new_tokens: accepted,
  known_correct: accepted + 1,
  ms,
});

describe("cell states", () => {
  it("marks prior, accepted, final and changing cells", () => {
    // Answer so far: 10 11 12 13 14; the row's block starts at answer[1].
    const answer = [10, 11, 12, 13, 14];
    const row = iter(0, 1, [11, 12, 99, 14], 1);
    expect(cellStates(row, answer)).toEqual(["prior", "accepted", "changing", "final"]);
  });

  it("leaves cells changing until the answer reaches them", () => {
    expect(cellStates(iter(0, 0, [5, 6, 7], 1), [5, 6])).toEqual(["prior", "accepted", "changing"]);
  });
});

describe("reduce", () => {
  it("keeps every iteration in order and computes the series", () => {
    let s = emptyViz();
    s = reduce(s, [
      { kind: "tokens", ids: [1] },
      { kind: "iteration", iteration: iter(0, 0, [1, 2, 3], 2, 20) },
      { kind: "tokens", ids: [2, 3] },
    ]);
    s = reduce(s, [{ kind: "iteration", iteration: iter(1, 2, [3, 4, 5], 1, 20) }]);
    expect(s.iterations.length).toBe(2);
    expect(s.tokensPerIteration).toEqual([2, 1]);
    expect(s.tokensPerSecond[1]).toBeCloseTo(3 / 0.04);
    expect(s.answer).toEqual([1, 2, 3]);
  });

  it("refuses an iteration out of order instead of drawing it wrong", () => {
    expect(() => reduce(emptyViz(), [{ kind: "iteration", iteration: iter(1, 0, [1], 1) }])).toThrow();
  });

  it("does not mutate the previous state", () => {
    const a = reduce(emptyViz(), [{ kind: "iteration", iteration: iter(0, 0, [1, 2], 1) }]);
    reduce(a, [{ kind: "iteration", iteration: iter(1, 1, [2, 3], 1) }]);
    expect(a.iterations.length).toBe(1);
  });
});

describe("replay", () => {
  it("scrubs to any iteration with the full answer known", () => {
    const its = [iter(0, 0, [1, 9, 9], 1), iter(1, 1, [2, 3, 4], 2), iter(2, 3, [4, 5, 6], 2)];
    const s = replayState(its, [1, 2, 3, 4, 5, 6, 7]);
    const rows = visibleRows(s, 1, 100);
    expect(rows.length).toBe(1);
    expect(rows[0].cells.map((c) => c.state)).toEqual(["prior", "accepted", "changing"]);
    expect(visibleRows(s, 3, 2).map((r) => r.index)).toEqual([1, 2]);
  });

  it("keeps 1000+ iterations and windows what is drawn", () => {
    const its = Array.from({ length: 1500 }, (_, i) => iter(i, i, [i, i + 1], 1));
    const s = replayState(its, Array.from({ length: 1502 }, (_, i) => i));
    expect(s.iterations.length).toBe(1500);
    expect(visibleRows(s, 1500, 200).length).toBe(200);
  });
});

describe("guesses from the context", () => {
  it("labels rows and counts passes by where their guesses came from", () => {
    const copied = { ...iter(1, 1, [2, 3, 4], 2), context_match: 3 };
    // Answers saved before the field existed have no context_match: the model's own guesses.
    const s = replayState([iter(0, 0, [1, 9, 9], 1), copied], [1, 2, 3, 4]);
    expect(visibleRows(s, 2, 10).map((r) => r.contextMatch)).toEqual([0, 3]);
    expect(s.contextPasses).toBe(1);
  });
});

describe("speedup", () => {
  it("divides Jacobi tokens/s by the measured AR tokens/s", () => {
    const s = reduce(emptyViz(), [{ kind: "iteration", iteration: iter(0, 0, [1, 2, 3], 2, 10) }]);
    expect(speedup(s, 100)).toBeCloseTo(2);
    expect(speedup(s, null)).toBeNull();
  });
});

describe("frame batcher", () => {
  it("delivers everything in order, once per frame", () => {
    const frames: (() => void)[] = [];
    const got: number[][] = [];
    const b = new FrameBatcher<number>((xs) => got.push(xs), (cb) => frames.push(cb));
    b.push(1);
    b.push(2);
    b.push(3);
    expect(frames.length).toBe(1);
    frames[0]();
    b.push(4);
    frames[1]();
    expect(got).toEqual([[1, 2, 3], [4]]);
  });
});
