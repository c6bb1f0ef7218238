// The conversation: user and assistant messages rendered as sanitized Markdown.

import { useEffect, useRef } from "preact/hooks";
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
}) {
  const end = useRef<HTMLDivElement>(null);
  useEffect(() => end.current?.scrollIntoView({ block: "end" }), [props.messages, props.streaming]);
  const lastAssistant = [...props.messages].reverse().find((m) => m.role === "assistant");
  return (
    <div class="messages" data-testid="messages">
      {props.messages.map((m) => (
        <div
          class={`message ${m.role}`}
          key={m.id}
          data-testid={`message-${m.role}`}
          data-passes={m.stats?.forward_passes ?? ""}
          data-stop={m.stats?.stop_reason ?? ""}
          data-mode={m.stats?.mode ?? ""}
          data-prompt-tokens={m.stats?.prompt_tokens ?? ""}
        >
          <div class="body" dangerouslySetInnerHTML={{ __html: renderMarkdown(m.content) }} />
          <div class="meta">
            <span class="saved" title="saved to disk">saved</span>
            {m.stats && (
              <span>
                {m.stats.generated_tokens} tokens · {m.stats.forward_passes} passes ·{" "}
                {m.stats.tokens_per_iteration.toFixed(2)} tokens/pass ·{" "}
                {m.stats.tokens_per_second.toFixed(1)} tokens/s · {m.stats.mode}
                {m.stats.mode !== "ar" ? ` (block ${m.stats.block})` : ""}
                {m.stats.stop_reason === "cancelled" ? " · stopped" : ""}
                {` · prompt ${m.stats.prompt_tokens} tokens in ${m.stats.prefill_ms.toFixed(0)} ms`}
                {m.stats.reused_prompt_tokens ? ` (${m.stats.reused_prompt_tokens} cached)` : ""}
                {m.stats.dropped_messages
                  ? ` · the ${m.stats.dropped_messages} earliest messages did not fit the context`
                  : ""}
              </span>
            )}
            <button onClick={() => navigator.clipboard?.writeText(m.content)}>copy</button>
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
