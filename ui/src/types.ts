// What the Rust side sends; mirrors src-tauri/src/chat.rs and db.rs.

export interface IterationView {
  index: number;
  block_start: number;
  before: string[];
  after: string[];
  before_ids: number[];
  after_ids: number[];
  accepted: number;
  new_tokens: number;
  known_correct: number;
  /** Length of the context match the guesses were copied after; 0 (or absent, in answers
   * saved before guesses came from the context): the model's own guesses. */
  context_match?: number;
  ms: number;
}

export interface Generation {
  text: string;
  token_ids: number[];
  stop_reason: string;
  prompt_tokens: number;
  /** Prompt tokens whose KV entries the previous generation left (absent in older saves). */
  reused_prompt_tokens?: number;
  /** Earliest messages of the conversation left out to fit the context (saved stats only). */
  dropped_messages?: number;
  /** The model that answered: its file or folder (saved stats only; absent in older saves). */
  model?: string;
  generated_tokens: number;
  forward_passes: number;
  tokens_per_iteration: number;
  tokens_per_second: number;
  prefill_ms: number;
  decode_ms: number;
  mode: string;
  block: number;
}

export interface ChatSettings {
  mode: "ar" | "jacobi";
  block: string;
  max_tokens: number;
  temperature: number;
  /** Where Jacobi blocks take their guesses from; absent in settings saved before it existed
   * (the engine then copies from the context). */
  guesses?: "context" | "jacobi";
  /** The system message the chat template opens with; empty (or absent, in settings saved
   * before it existed) for the template's own default. */
  system?: string;
}

export interface Conversation {
  id: number;
  title: string;
  settings: ChatSettings;
  created_at: number;
  updated_at: number;
}

export interface StoredMessage {
  id: number;
  conversation_id: number;
  role: "user" | "assistant";
  content: string;
  stats: Generation | null;
  trajectory: IterationView[] | null;
  created_at: number;
}

export type ChatEvent =
  | { kind: "started"; user_message: StoredMessage | null; mode: string }
  | { kind: "prefill_progress"; done: number; total: number }
  | { kind: "prefill"; prompt_tokens: number; reused_tokens: number; ms: number }
  | { kind: "text"; ids: number[]; delta: string }
  | ({ kind: "iteration" } & IterationView)
  | { kind: "done"; message: StoredMessage; stats: Generation; ar_tokens_per_second: number | null };

export type RaceEvent =
  | { kind: "lane"; lane: "ar" | "jacobi"; event: ChatEvent }
  | { kind: "finished"; ar: Generation; jacobi: Generation; speedup: number; identical: boolean };

export interface ModelInfo {
  path: string;
  format: string;
  weights: string;
  backend: string;
  parameters: number;
  layers: number;
  context_length: number;
  vocab_size: number;
  device: string;
}

export interface ModelEntry {
  name: string;
  path: string;
  origin: string;
  installed: boolean;
  bytes: number;
}

export interface AppError {
  kind: string;
  message: string;
}

// Training (mirrors fixpoint::train::job and src-tauri/src/training.rs).

export type Stage = "baseline" | "trajectories" | "training" | "after" | "done";
export type JobStatus = "ready" | "running" | "cancelled" | "failed" | "done";

export interface JobSettings {
  block: number;
  max_new: number;
  eval_tokens: number;
  steps: number | null;
  lr: number;
  max_len: number;
  checkpoint_every: number;
  seed: number;
}

export interface StepStats {
  step: number;
  total_steps: number;
  loss: number;
  ar_loss: number;
  consistency_loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  tokens_per_second: number;
  step_seconds: number;
  eta_seconds: number;
}

export interface Evaluation {
  model: string;
  prompts: number;
  block: number;
  ar_tokens_per_second: number;
  jacobi_tokens_per_second: number;
  tokens_per_iteration: number;
  speedup: number;
  /** Jacobi with block auto, as chat decodes (absent in jobs measured before it was). */
  auto_tokens_per_second?: number | null;
  auto_speedup?: number | null;
  identical_to_ar: boolean;
  answers: { prompt: string; ar: string; jacobi: string }[];
}

export interface Job {
  id: string;
  name: string;
  created_unix: number;
  model: string;
  settings: JobSettings;
  train_prompts: string[];
  held_out: string[];
  stage: Stage;
  status: JobStatus;
  error: string | null;
  baseline: Evaluation | null;
  collected: { prompts: number; records: number; tokens_per_pass: number } | null;
  history: StepStats[];
  after: Evaluation | null;
  trained_model: string | null;
}

export interface JobView extends Job {
  active: boolean;
}

export interface TrainingPlan {
  prompts: number;
  train: number;
  held_out: number;
  settings: JobSettings;
  estimated_updates: number;
  estimated_seconds: number;
  memory_bytes: number;
  disk_bytes: number;
  problems: string[];
  recommended: JobSettings;
  default_name: string;
  model: string;
}

export interface CollectProgress {
  prompts_done: number;
  prompts_total: number;
  records: number;
  dropped: number;
  tokens: number;
  tokens_per_pass: number;
  elapsed_s: number;
  eta_s: number;
}

export type TrainEvent =
  | { event: "started"; records: number; block: number; total_steps: number; first_step: number; trainable_parameters: number }
  | ({ event: "step" } & StepStats)
  | { event: "checkpoint"; step: number; path: string }
  | { event: "finished"; model: string }
  | { event: "cancelled"; step: number; checkpoint: string | null };

export type JobEvent =
  | { kind: "saved"; job: Job }
  | { kind: "measuring"; stage: Stage; done: number; total: number; eta_s: number }
  | ({ kind: "collecting" } & CollectProgress)
  | { kind: "training"; event: TrainEvent };
