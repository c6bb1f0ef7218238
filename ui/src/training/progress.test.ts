import { describe, expect, it } from "vitest";
import type { Job, JobEvent, StepStats } from "../types";
import { applyJobEvent, duration, pastedPrompts, progressOf } from "./progress";

const stats = (step: number): StepStats => ({
  step,
  total_steps: 4,
  loss: 10 - step,
  ar_loss: 2,
  consistency_loss: 8 - step,
  lr: 1e-4,
  grad_norm: 1,
  tokens: 100,
  tokens_per_second: 50,
  step_seconds: 2,
  eta_seconds: (3 - step) * 2,
});

const job = (over: Partial<Job>): Job => ({
  id: "job-1",
  name: "m",
  created_unix: 0,
  model: "/m.gguf",
  settings: { block: 16, max_new: 128, eval_tokens: 128, steps: 4, lr: 1e-4, max_len: 256, checkpoint_every: 2, seed: 0 },
  train_prompts: ["a"],
  held_out: ["b"],
  stage: "baseline",
  status: "running",
  error: null,
  baseline: null,
  collected: null,
  history: [],
  after: null,
  trained_model: null,
  ...over,
});

describe("training progress", () => {
  it("follows stages, progress and ETA", () => {
    let p = progressOf(null);
    p = applyJobEvent(p, { kind: "saved", job: job({}) });
    p = applyJobEvent(p, { kind: "measuring", stage: "baseline", done: 1, total: 2, eta_s: 3 });
    expect([p.stage, p.done, p.total, p.eta_s]).toEqual(["baseline", 1, 2, 3]);
    p = applyJobEvent(p, { kind: "saved", job: job({ stage: "trajectories" }) });
    expect([p.stage, p.done, p.total]).toEqual(["trajectories", 0, 0]);
    const collecting: JobEvent = {
      kind: "collecting",
      prompts_done: 3,
      prompts_total: 9,
      records: 20,
      dropped: 0,
      tokens: 300,
      tokens_per_pass: 1.25,
      elapsed_s: 6,
      eta_s: 12,
    };
    p = applyJobEvent(p, collecting);
    expect(p.detail).toBe("20 records, 1.25 tokens per pass");
    expect([p.done, p.total, p.eta_s]).toEqual([3, 9, 12]);
  });

  it("keeps the loss history across a resume from a checkpoint", () => {
    // Saved at the checkpoint after 2 updates; 3 had run when the app was closed.
    let p = progressOf(job({ stage: "training", history: [stats(0), stats(1)] }));
    expect(p.history.length).toBe(2);
    p = applyJobEvent(p, {
      kind: "training",
      event: { event: "started", records: 10, block: 16, total_steps: 4, first_step: 2, trainable_parameters: 1e6 },
    });
    expect([p.done, p.total, p.history.length]).toEqual([2, 4, 2]);
    p = applyJobEvent(p, { kind: "training", event: { event: "step", ...stats(2) } });
    p = applyJobEvent(p, { kind: "training", event: { event: "step", ...stats(3) } });
    expect(p.history.map((s) => s.step)).toEqual([0, 1, 2, 3]);
    expect(p.history[3]).toEqual(stats(3));
    expect([p.done, p.eta_s, p.tokensPerSecond]).toEqual([4, 0, 50]);
    // A restarted job that resumes from an earlier checkpoint drops the updates after it.
    p = applyJobEvent(p, {
      kind: "training",
      event: { event: "started", records: 10, block: 16, total_steps: 4, first_step: 1, trainable_parameters: 1e6 },
    });
    expect(p.history.map((s) => s.step)).toEqual([0]);
  });

  it("formats durations and splits pasted prompts", () => {
    expect(duration(42.4)).toBe("42 s");
    expect(duration(200)).toBe("3 min 20 s");
    expect(duration(3900)).toBe("1 h 5 min");
    expect(pastedPrompts(" a \n\n b\n  \n")).toEqual(["a", "b"]);
  });
});
