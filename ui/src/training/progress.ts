// Folds a training job's events into what the training tab draws: the job as last saved, the
// running stage's progress and ETA, and the loss history.

import type { Job, JobEvent, Stage, StepStats } from "../types";

export const STAGES: { key: Stage; label: string }[] = [
  { key: "baseline", label: "Measure the base model" },
  { key: "trajectories", label: "Collect Jacobi trajectories" },
  { key: "training", label: "Consistency training" },
  { key: "after", label: "Measure the trained model" },
];

export interface JobProgress {
  job: Job | null;
  stage: Stage | null;
  done: number;
  total: number;
  eta_s: number;
  detail: string;
  history: StepStats[];
  tokensPerSecond: number | null;
}

export function progressOf(job: Job | null): JobProgress {
  return {
    job,
    stage: job?.stage ?? null,
    done: 0,
    total: 0,
    eta_s: 0,
    detail: "",
    history: job?.history ?? [],
    tokensPerSecond: null,
  };
}

export function applyJobEvent(p: JobProgress, e: JobEvent): JobProgress {
  switch (e.kind) {
    case "saved": {
      const moved = e.job.stage !== p.stage;
      return {
        ...p,
        job: e.job,
        stage: e.job.stage,
        history: e.job.history,
        ...(moved ? { done: 0, total: 0, eta_s: 0, detail: "" } : {}),
      };
    }
    case "measuring":
      return {
        ...p,
        stage: e.stage,
        done: e.done,
        total: e.total,
        eta_s: e.eta_s,
        detail: `held-out prompt ${e.done} of ${e.total}`,
      };
    case "collecting":
      return {
        ...p,
        stage: "trajectories",
        done: e.prompts_done,
        total: e.prompts_total,
        eta_s: e.eta_s,
        detail: `${e.records} records, ${e.tokens_per_pass.toFixed(2)} tokens per pass`,
      };
    case "training": {
      const t = e.event;
      if (t.event === "started") {
        return {
          ...p,
          stage: "training",
          done: t.first_step,
          total: t.total_steps,
          eta_s: 0,
          detail: `${t.records} records, ${(t.trainable_parameters / 1e6).toFixed(1)}M trainable parameters`,
          history: p.history.filter((s) => s.step < t.first_step),
        };
      }
      if (t.event === "step") {
        const { event: _, ...stats } = t;
        return {
          ...p,
          stage: "training",
          done: stats.step + 1,
          total: stats.total_steps,
          eta_s: stats.eta_seconds,
          detail: `loss ${stats.loss.toFixed(3)}`,
          history: [...p.history, stats],
          tokensPerSecond: stats.tokens_per_second,
        };
      }
      if (t.event === "checkpoint") return { ...p, detail: `checkpoint saved at update ${t.step}` };
      if (t.event === "cancelled") return { ...p, detail: `stopped at update ${t.step}; checkpoint kept` };
      return p;
    }
  }
}

/** "45 s", "3 min 20 s", "1 h 5 min". */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Pasted text: one prompt per non-empty line. */
export function pastedPrompts(text: string): string[] {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
}
