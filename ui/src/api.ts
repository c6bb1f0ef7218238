// Typed wrappers over the app's commands (src-tauri/src/commands.rs).

import { Channel, invoke } from "@tauri-apps/api/core";
import type {
  AppError,
  ChatEvent,
  ChatSettings,
  Conversation,
  Job,
  JobEvent,
  JobSettings,
  JobView,
  ModelEntry,
  ModelInfo,
  RaceEvent,
  StoredMessage,
  TrainingPlan,
} from "./types";

/** The message of an error a command returned (`{kind, message}`) or threw. */
export function errorText(e: unknown): string {
  if (e && typeof e === "object" && "message" in e) return String((e as AppError).message);
  return String(e);
}

function channel<T>(on: (e: T) => void): Channel<T> {
  const c = new Channel<T>();
  c.onmessage = on;
  return c;
}

export const api = {
  listModels: () => invoke<ModelEntry[]>("list_models"),
  currentModel: () => invoke<ModelInfo | null>("current_model"),
  startupModel: () => invoke<string | null>("startup_model"),
  startupNotice: () => invoke<string | null>("startup_notice"),
  loadModel: (path: string) => invoke<ModelInfo>("load_model", { path }),
  fetchDefaultModel: (on: (e: { kind: string; line?: string; path?: string }) => void) =>
    invoke<string>("fetch_default_model", { channel: channel(on) }),
  listConversations: (query: string) => invoke<Conversation[]>("list_conversations", { query }),
  createConversation: (settings: ChatSettings) => invoke<Conversation>("create_conversation", { settings }),
  renameConversation: (id: number, title: string) =>
    invoke<Conversation>("rename_conversation", { id, title }),
  deleteConversation: (id: number) => invoke<void>("delete_conversation", { id }),
  getMessages: (id: number) => invoke<StoredMessage[]>("get_messages", { id }),
  updateSettings: (id: number, settings: ChatSettings) =>
    invoke<Conversation>("update_settings", { id, settings }),
  exportConversation: (id: number, format: "markdown" | "json") =>
    invoke<string>("export_conversation", { id, format }),
  sendMessage: (conversationId: number, content: string, on: (e: ChatEvent) => void) =>
    invoke<StoredMessage>("send_message", { conversationId, content, channel: channel(on) }),
  regenerate: (conversationId: number, on: (e: ChatEvent) => void) =>
    invoke<StoredMessage>("regenerate", { conversationId, channel: channel(on) }),
  continueAnswer: (conversationId: number, on: (e: ChatEvent) => void) =>
    invoke<StoredMessage>("continue_answer", { conversationId, channel: channel(on) }),
  editMessage: (conversationId: number, messageId: number, content: string, on: (e: ChatEvent) => void) =>
    invoke<StoredMessage>("edit_message", { conversationId, messageId, content, channel: channel(on) }),
  stop: () => invoke<boolean>("stop_generation"),
  race: (prompt: string, settings: ChatSettings, on: (e: RaceEvent) => void) =>
    invoke<void>("race", { prompt, settings, channel: channel(on) }),
  trainingPlan: (prompts: string[], settings: JobSettings | null) =>
    invoke<TrainingPlan>("training_plan", { prompts, settings }),
  conversationPrompts: (ids: number[]) => invoke<string[]>("conversation_prompts", { ids }),
  filePrompts: (path: string) => invoke<string[]>("file_prompts", { path }),
  listTrainingJobs: () => invoke<JobView[]>("list_training_jobs"),
  startTraining: (name: string, prompts: string[], settings: JobSettings, on: (e: JobEvent) => void) =>
    invoke<Job>("start_training", { name, prompts, settings, channel: channel(on) }),
  resumeTraining: (id: string, on: (e: JobEvent) => void) =>
    invoke<Job>("resume_training", { id, channel: channel(on) }),
  cancelTraining: () => invoke<boolean>("cancel_training"),
  deleteTrainingJob: (id: string) => invoke<void>("delete_training_job", { id }),
  renameTrainedModel: (id: string, name: string) => invoke<Job>("rename_trained_model", { id, name }),
};
