// The training tab: pick prompts, start one job that measures, collects, trains and measures
// again, watch it, cancel or resume it, and compare before with after.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, errorText } from "../api";
import { FrameBatcher } from "../batch";
import type { Conversation, JobEvent, JobSettings, JobView, ModelInfo, TrainingPlan } from "../types";
import { LineChart } from "../visualizer/Chart";
import { ResultCard } from "./ResultCard";
import { applyJobEvent, duration, pastedPrompts, progressOf, STAGES, type JobProgress } from "./progress";

type Source = "conversations" | "paste" | "file";

export function TrainingPanel(props: {
  current: ModelInfo | null;
  conversations: Conversation[];
  onModelsChanged: () => void;
  onChatWith: (path: string) => void;
}) {
  const [source, setSource] = useState<Source>("paste");
  const [pasted, setPasted] = useState("");
  const [picked, setPicked] = useState<number[]>([]);
  const [filePath, setFilePath] = useState("");
  const [fromFile, setFromFile] = useState<string[]>([]);
  const [prompts, setPrompts] = useState<string[]>([]);
  const [settings, setSettings] = useState<JobSettings | null>(null);
  // What the advanced fields show while typed: a re-render of the app mid-typing must not
  // put the old value back, and "1e-" is not a number yet.
  const [drafts, setDrafts] = useState<Partial<Record<keyof JobSettings, string>>>({});
  const [plan, setPlan] = useState<TrainingPlan | null>(null);
  const [name, setName] = useState("");
  const [jobs, setJobs] = useState<JobView[]>([]);
  const [progress, setProgress] = useState<JobProgress>(progressOf(null));
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const nameEdited = useRef(false);

  const refreshJobs = async () => setJobs(await api.listTrainingJobs());
  useEffect(() => {
    refreshJobs().catch((e) => setError(errorText(e)));
  }, []);

  // A new model gets its own recommended settings and name.
  useEffect(() => {
    setSettings(null);
    setDrafts({});
    nameEdited.current = false;
  }, [props.current?.path]);

  // Prompts from the chosen source.
  useEffect(() => {
    if (source === "paste") setPrompts(pastedPrompts(pasted));
    else if (source === "file") setPrompts(fromFile);
    else api.conversationPrompts(picked).then(setPrompts, (e) => setError(errorText(e)));
  }, [source, pasted, picked, fromFile]);

  // The plan (counts and refusals) follows the prompts and settings, debounced.
  useEffect(() => {
    if (!props.current) return setPlan(null);
    let stale = false;
    const t = setTimeout(async () => {
      try {
        const p = await api.trainingPlan(prompts, settings);
        if (stale) return; // a newer plan is on its way
        setPlan(p);
        if (!settings) setSettings(p.recommended);
        if (!nameEdited.current) setName(p.default_name);
      } catch (e) {
        setError(errorText(e));
      }
    }, 250);
    return () => {
      stale = true;
      clearTimeout(t);
    };
  }, [prompts, settings, props.current?.path]);

  const loadFile = async () => {
    try {
      setFromFile(await api.filePrompts(filePath.trim()));
      setError(null);
    } catch (e) {
      setFromFile([]);
      setError(errorText(e));
    }
  };

  /** Runs a job (new or resumed) with its events folded once per frame. */
  const runJob = async (start: (on: (e: JobEvent) => void) => Promise<unknown>) => {
    setRunning(true);
    setError(null);
    const batcher = new FrameBatcher<JobEvent>((events) =>
      setProgress((p) => events.reduce(applyJobEvent, p)),
    );
    try {
      await start((e) => batcher.push(e));
    } catch (e) {
      setError(errorText(e));
    } finally {
      batcher.drain();
      setRunning(false);
      await refreshJobs();
      props.onModelsChanged();
    }
  };

  const start = () => {
    if (!settings) return;
    setProgress(progressOf(null));
    runJob((on) => api.startTraining(name, prompts, settings, on));
  };
  const resume = (j: JobView) => {
    setProgress(progressOf(j));
    runJob((on) => api.resumeTraining(j.id, on));
  };

  const job = progress.job;
  const interrupted = jobs.find((j) => !j.active && j.status !== "done" && j.status !== "ready");
  const canStart = !!props.current && !!plan && plan.problems.length === 0 && !running && !!settings;
  // Functional updates: two fields changed before a re-render must not undo each other.
  const set = (k: keyof JobSettings, v: string) => {
    const n = v.trim() === "" ? null : Number(v);
    if (k === "steps") setSettings((s) => s && { ...s, steps: n === null || Number.isNaN(n) ? null : n });
    else if (n !== null && !Number.isNaN(n)) setSettings((s) => s && { ...s, [k]: n });
  };

  return (
    <div class="training" data-testid="training">
      {error && (
        <div class="error" data-testid="train-error" onClick={() => setError(null)}>
          {error}
        </div>
      )}
      {interrupted && !running && (
        <div class="info" data-testid="train-interrupted">
          Training “{interrupted.name}” stopped during {STAGES.find((s) => s.key === interrupted.stage)?.label.toLowerCase() ?? interrupted.stage}
          {interrupted.status === "failed" ? ` (failed: ${interrupted.error})` : interrupted.status === "running" ? " (the app was closed)" : ""}.{" "}
          <button data-testid="train-resume" onClick={() => resume(interrupted)}>
            Resume from its checkpoint
          </button>
        </div>
      )}

      <section>
        <h3>1. Prompts</h3>
        <p class="hint">
          Questions like the ones you will ask. The model answers them itself; training teaches it to reach those answers in
          fewer passes. Some are held out to measure the result.
        </p>
        <div class="sources">
          {(["paste", "conversations", "file"] as Source[]).map((s) => (
            <label key={s}>
              <input type="radio" name="source" checked={source === s} data-testid={`train-source-${s}`} onChange={() => setSource(s)} />
              {s === "paste" ? "Paste" : s === "conversations" ? "My conversations" : "JSONL / text file"}
            </label>
          ))}
        </div>
        {source === "paste" && (
          <textarea
            data-testid="train-paste"
            rows={6}
            placeholder="One prompt per line"
            value={pasted}
            onInput={(e) => setPasted((e.target as HTMLTextAreaElement).value)}
          />
        )}
        {source === "conversations" && (
          <div class="picklist">
            {props.conversations.length === 0 && <p class="hint">No conversations yet.</p>}
            {props.conversations.map((c) => (
              <label key={c.id}>
                <input
                  type="checkbox"
                  checked={picked.includes(c.id)}
                  onChange={(e) =>
                    setPicked((ps) => ((e.target as HTMLInputElement).checked ? [...ps, c.id] : ps.filter((p) => p !== c.id)))
                  }
                />
                {c.title}
              </label>
            ))}
          </div>
        )}
        {source === "file" && (
          <div class="line">
            <input
              placeholder="/path/to/prompts.jsonl (question, prompt or text field) or .txt"
              value={filePath}
              data-testid="train-file"
              onInput={(e) => setFilePath((e.target as HTMLInputElement).value)}
            />
            <button disabled={!filePath.trim()} onClick={loadFile}>
              Read
            </button>
          </div>
        )}
        <p data-testid="train-summary">
          {plan
            ? `${plan.prompts} ${plan.prompts === 1 ? "prompt" : "prompts"}: ${plan.train} to train on, ${plan.held_out} held out to measure`
            : props.current
              ? "…"
              : "Load a model first: training fine-tunes the loaded model."}
        </p>
        {plan && plan.problems.length > 0 && (
          <ul class="problems" data-testid="train-problems">
            {plan.problems.map((p) => (
              <li key={p}>{p}</li>
            ))}
          </ul>
        )}
      </section>

      <section>
        <h3>2. Train</h3>
        <div class="line">
          <label>
            New model's name{" "}
            <input
              data-testid="train-name"
              value={name}
              onInput={(e) => {
                nameEdited.current = true;
                setName((e.target as HTMLInputElement).value);
              }}
            />
          </label>
          {running ? (
            <button class="stop" data-testid="train-cancel" onClick={() => api.cancelTraining()}>
              Cancel
            </button>
          ) : (
            <button class="primary" data-testid="train-start" disabled={!canStart} onClick={start}>
              Start training
            </button>
          )}
        </div>
        {plan && settings && (
          <p class="hint" data-testid="train-plan">
            Block {plan.settings.block}, {plan.settings.max_new} new tokens per prompt, about {plan.estimated_updates} updates,{" "}
            {duration(plan.estimated_seconds)} in all on this machine; needs about {(plan.memory_bytes / 1e9).toFixed(1)} GB of memory and{" "}
            {(plan.disk_bytes / 1e9).toFixed(1)} GB of disk. Base model: {plan.model}
          </p>
        )}
        {settings && (
          <details>
            <summary>Advanced</summary>
            <div class="advanced">
              {(
                [
                  ["block", "Block size n"],
                  ["max_new", "New tokens per training prompt"],
                  ["eval_tokens", "New tokens per held-out prompt"],
                  ["steps", "Updates (empty: one pass over the data)"],
                  ["lr", "Learning rate"],
                  ["checkpoint_every", "Checkpoint every N updates"],
                ] as [keyof JobSettings, string][]
              ).map(([k, label]) => (
                <label key={k}>
                  {label}
                  <input
                    data-testid={`train-${k}`}
                    value={drafts[k] ?? (settings[k] === null ? "" : String(settings[k]))}
                    onInput={(e) => {
                      const v = (e.target as HTMLInputElement).value;
                      setDrafts((d) => ({ ...d, [k]: v }));
                      set(k, v);
                    }}
                  />
                </label>
              ))}
              <button
                onClick={() => {
                  if (!plan) return;
                  setDrafts({});
                  setSettings(plan.recommended);
                }}
              >
                Recommended
              </button>
            </div>
          </details>
        )}
      </section>

      {job && (
        <section data-testid="train-job">
          <h3>
            {job.name} <span class="hint">({running ? "running" : job.status})</span>
          </h3>
          <ol class="stages">
            {STAGES.map((s, i) => {
              const at = STAGES.findIndex((x) => x.key === (progress.stage ?? job.stage));
              const state = job.stage === "done" || i < at ? "done" : i === at ? (running ? "now" : "stopped") : "todo";
              return (
                <li key={s.key} class={state} data-testid={`train-stage-${s.key}`} data-state={state}>
                  {s.label}
                  {i === at && running && progress.total > 0 && (
                    <>
                      {" "}
                      <progress data-testid="train-progress" value={progress.done} max={progress.total} /> {progress.done}/
                      {progress.total}
                      {progress.eta_s > 0 && ` · ETA ${duration(progress.eta_s)}`}
                      {progress.detail && ` · ${progress.detail}`}
                    </>
                  )}
                </li>
              );
            })}
          </ol>
          {job.error && <p class="error">{job.error}</p>}
          {progress.history.length > 0 && (
            <div class="line charts-row">
              <LineChart
                title="consistency loss"
                values={progress.history.map((s) => s.consistency_loss)}
                color="#c2410c"
                testid="train-consistency-chart"
              />
              <LineChart title="AR loss" values={progress.history.map((s) => s.ar_loss)} color="#1d4ed8" testid="train-ar-chart" />
              {progress.tokensPerSecond !== null && <span>{progress.tokensPerSecond.toFixed(0)} training tokens/s</span>}
            </div>
          )}
          {job.stage === "done" && job.baseline && job.after && (
            <ResultCard
              key={job.id}
              job={job}
              onRenamed={async (j) => {
                setProgress((p) => ({ ...p, job: j }));
                await refreshJobs();
                props.onModelsChanged();
              }}
              onError={setError}
              onChatWith={props.onChatWith}
            />
          )}
        </section>
      )}

      <section>
        <h3>Jobs</h3>
        {jobs.length === 0 && <p class="hint">None yet.</p>}
        <table class="jobs">
          <tbody>
            {jobs.map((j) => (
              <tr key={j.id} data-testid="train-job-row">
                <td>{j.name}</td>
                <td>{new Date(j.created_unix * 1000).toLocaleString()}</td>
                <td>{j.active ? "running" : j.status === "running" ? "interrupted" : j.status}</td>
                <td>{j.stage}</td>
                <td>
                  <button disabled={running} onClick={() => setProgress(progressOf(j))}>
                    Show
                  </button>
                  {!j.active && j.status !== "done" && (
                    <button disabled={running} onClick={() => resume(j)}>
                      Resume
                    </button>
                  )}
                  {!j.active && (
                    <button
                      onClick={async () => {
                        try {
                          await api.deleteTrainingJob(j.id);
                          if (progress.job?.id === j.id) setProgress(progressOf(null));
                          await refreshJobs();
                        } catch (e) {
                          setError(errorText(e));
                        }
                      }}
                    >
                      Delete job
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>
    </div>
  );
}
