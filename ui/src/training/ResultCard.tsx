// Before and after a finished job: the numbers that matter for Jacobi decoding, a few answers
// side by side, the new model's name (editable) and a way to chat with it.

import { useState } from "preact/hooks";
import { api, errorText } from "../api";
import type { Evaluation, Job } from "../types";

export function ResultCard(props: {
  job: Job;
  onRenamed: (job: Job) => void;
  onError: (message: string) => void;
  onChatWith: (path: string) => void;
}) {
  const { job } = props;
  const before = job.baseline!;
  const after = job.after!;
  const [name, setName] = useState(job.name);
  const rows: [string, (e: Evaluation) => string][] = [
    ["tokens per pass (Jacobi, block " + before.block + ")", (e) => e.tokens_per_iteration.toFixed(2)],
    ["Jacobi tokens/s, block " + before.block, (e) => e.jacobi_tokens_per_second.toFixed(1)],
    ["greedy AR tokens/s", (e) => e.ar_tokens_per_second.toFixed(1)],
    ["speedup of Jacobi, block " + before.block + ", over AR", (e) => e.speedup.toFixed(2) + "x"],
    ["Jacobi tokens/s, block auto (as chat decodes)", (e) => e.auto_tokens_per_second?.toFixed(1) ?? "not measured"],
    ["speedup of Jacobi auto over AR", (e) => (e.auto_speedup != null ? e.auto_speedup.toFixed(2) + "x" : "not measured")],
    ["Jacobi output identical to AR", (e) => (e.identical_to_ar ? "yes" : "no")],
  ];
  return (
    <div class="result" data-testid="train-result">
      <table>
        <thead>
          <tr>
            <th>
              on {before.prompts} held-out {before.prompts === 1 ? "prompt" : "prompts"}
            </th>
            <th>before</th>
            <th>after</th>
          </tr>
        </thead>
        <tbody>
          {rows.map(([label, f]) => (
            <tr key={label}>
              <td>{label}</td>
              <td>{f(before)}</td>
              <td data-testid={label.startsWith("tokens per pass") ? "train-after-tpi" : undefined}>{f(after)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="hint">
        Speeds are of each model's own kernels: the base model as stored ({before.model.split("/").pop()}), the trained one
        from its f32 weights requantized to Q8_0 at load.
      </p>
      {before.answers.map((a, i) => (
        <div class="answers" key={a.prompt}>
          <div class="prompt">{a.prompt}</div>
          <div class="pair">
            <div>
              <span class="hint">before</span>
              <pre>{a.jacobi}</pre>
            </div>
            <div>
              <span class="hint">after</span>
              <pre>{after.answers[i]?.jacobi ?? ""}</pre>
            </div>
          </div>
        </div>
      ))}
      <div class="line">
        <input data-testid="train-rename-input" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        <button
          data-testid="train-rename"
          disabled={name.trim() === job.name}
          onClick={async () => {
            try {
              props.onRenamed(await api.renameTrainedModel(job.id, name));
            } catch (e) {
              props.onError(errorText(e));
            }
          }}
        >
          Rename
        </button>
        <button class="primary" data-testid="train-chat" onClick={() => props.onChatWith(job.trained_model!)}>
          Chat with {job.name}
        </button>
      </div>
    </div>
  );
}
