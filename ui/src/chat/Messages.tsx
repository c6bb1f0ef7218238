// The conversation: user and assistant messages rendered as sanitized Markdown.

import { useEffect, useRef, useState } from "preact/hooks";
import { renderMarkdown } from "../markdown";
import type { StoredMessage } from "../types";

export function Messages(props: {
  messages: StoredMessage[];
  streaming: string | null;
  /** Prompt tokens through the model so far, while a long prompt is read. */
  reading: { done: number; total: number } | null;
  busy: boolean;
  onReplay: (m: StoredMessage) => void;
  onRegenerate: () => void;
  /** A question answered again with new text, replacing the messages after it. */
  onEdit: (m: StoredMessage, text: string) => void;
  /** The last answer, from where it stopped. */
  onContinue: () => void;
}) {
  const end = useRef<HTMLDivElement>(null);
  // The question being edited, and its text so far.
  const [editing, setEditing] = useState<{ id: number; text: string } | null>(null);
  const finishEdit = (m: StoredMessage) => {
    if (!editing || !editing.text.trim()) return;
    setEditing(null);
    props.onEdit(m, editing.text);
  };
  useEffect(() => end.current?.scrollIntoView({ block: "end" }), [props.messages, props.streaming]);
  const lastAssistant = [...props.messages].reverse().find((m) => m.role === "assistant");
  return (
    <div class="messages" data-testid="messages">
      {props.messages.map((m, i) => (
        <div
          class={`message ${m.role}`}
          key={m.id}
          data-testid={`message-${m.role}`}
          data-passes={m.stats?.forward_passes ?? ""}
          data-stop={m.stats?.stop_reason ?? ""}
          data-mode={m.stats?.mode ?? ""}
          data-prompt-tokens={m.stats?.prompt_tokens ?? ""}
        >
          {editing?.id === m.id ? (
            <div class="edit">
              <textarea
                value={editing.text}
                rows={3}
                data-testid="edit-text"
                onInput={(e) => setEditing({ id: m.id, text: (e.target as HTMLTextAreaElement).value })}
                onKeyDown={(e) => {
                  if (e.key === "Enter" && !e.shiftKey) {
                    e.preventDefault();
                    finishEdit(m);
                  } else if (e.key === "Escape") {
                    setEditing(null);
                  }
                }}
              />
              <div class="meta">
                {i + 1 < props.messages.length && (
                  <span>
                    replaces the {props.messages.length - i - 1 === 1 ? "answer" : `${props.messages.length - i - 1} messages`}{" "}
                    after it
                  </span>
                )}
                <button data-testid="edit-send" disabled={!editing.text.trim() || props.busy} onClick={() => finishEdit(m)}>
                  send
                </button>
                <button onClick={() => setEditing(null)}>cancel</button>
              </div>
            </div>
          ) : (
            <div class="body" dangerouslySetInnerHTML={{ __html: renderMarkdown(m.content) }} />
          )}
          <div class="meta">
            <span class="saved" title="saved to disk">saved</span>
            {m.stats && (
              <span>
                {m.stats.generated_tokens} tokens · {m.stats.forward_passes} passes ·{" "}
                {m.stats.tokens_per_iteration.toFixed(2)} tokens/pass ·{" "}
                {m.stats.tokens_per_second.toFixed(1)} tokens/s · {m.stats.mode}
                {m.stats.mode !== "ar" ? ` (block ${m.stats.block})` : ""}
                {m.stats.stop_reason === "cancelled" ? " · stopped" : ""}
                {m.stats.model ? ` · ${modelName(m.stats.model)}` : ""}
                {` · prompt ${m.stats.prompt_tokens} tokens in ${m.stats.prefill_ms.toFixed(0)} ms`}
                {m.stats.reused_prompt_tokens ? ` (${m.stats.reused_prompt_tokens} cached)` : ""}
                {m.stats.dropped_messages
                  ? ` · the ${m.stats.dropped_messages} earliest messages did not fit the context`
                  : ""}
              </span>
            )}
            <button onClick={() => navigator.clipboard?.writeText(m.content)}>copy</button>
            {m.role === "user" && !props.busy && editing?.id !== m.id && (
              <button data-testid="edit" onClick={() => setEditing({ id: m.id, text: m.content })}>
                edit
              </button>
            )}
            {m.trajectory && m.trajectory.length > 0 && (
              <button data-testid="replay-button" onClick={() => props.onReplay(m)}>
                replay
              </button>
            )}
            {m === lastAssistant && !props.busy && (
              <button data-testid="regenerate" onClick={props.onRegenerate}>
                regenerate
              </button>
            )}
            {m === props.messages[props.messages.length - 1] &&
              m.role === "assistant" &&
              !props.busy &&
              (m.stats?.stop_reason === "max_tokens" || m.stats?.stop_reason === "cancelled") && (
                <button
                  data-testid="continue"
                  title="Go on from where the answer stopped (the same text one longer answer would have)"
                  onClick={props.onContinue}
                >
                  continue
                </button>
              )}
          </div>
        </div>
      ))}
      {props.streaming !== null && (
        <div class="message assistant streaming" data-testid="streaming" data-chars={props.streaming.length}>
          {props.reading && !props.streaming ? (
            <div class="body reading" data-testid="reading">
              reading the prompt: {props.reading.done} of {props.reading.total} tokens
              <progress value={props.reading.done} max={props.reading.total} />
            </div>
          ) : (
            <div class="body" dangerouslySetInnerHTML={{ __html: renderMarkdown(props.streaming || "…") }} />
          )}
        </div>
      )}
      <div ref={end} />
    </div>
  );
}

/** A model's file or folder name, without the path that leads to it. */
function modelName(path: string): string {
  return path.split(/[\\/]/).filter(Boolean).pop() ?? path;
}
