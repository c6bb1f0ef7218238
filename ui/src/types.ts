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
  ms: number;
}

export interface Generation {
  text: string;
  token_ids: number[];
  stop_reason: string;
  prompt_tokens: number;
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
  | { kind: "prefill"; prompt_tokens: number; ms: number }
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
