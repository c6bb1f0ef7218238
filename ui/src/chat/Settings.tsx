// Per-conversation decoding settings.

import { useEffect, useState } from "preact/hooks";
import type { ChatSettings } from "../types";

export function SettingsBar(props: {
  settings: ChatSettings;
  disabled: boolean;
  onChange: (s: ChatSettings) => void;
}) {
  const s = props.settings;
  const set = (patch: Partial<ChatSettings>) => props.onChange({ ...s, ...patch });
  const saved = s.system ?? "";
  // The system prompt is edited here and saved when the field loses focus, not per keystroke.
  const [open, setOpen] = useState(false);
  const [system, setSystem] = useState(saved);
  useEffect(() => setSystem(saved), [saved]);
  const commit = () => {
    if (system !== saved) set({ system });
  };
  return (
    <>
      <div class="settings" data-testid="settings">
        <label>
          decoder
          <select
            value={s.mode}
            disabled={props.disabled}
            data-testid="setting-mode"
            onChange={(e) => set({ mode: (e.target as HTMLSelectElement).value as ChatSettings["mode"] })}
          >
            <option value="jacobi">Jacobi</option>
            <option value="ar">AR (one token per pass)</option>
          </select>
        </label>
        {s.mode === "jacobi" ? (
          <>
            <label>
              block
              <input
                value={s.block}
                size={5}
                disabled={props.disabled}
                data-testid="setting-block"
                onChange={(e) => set({ block: (e.target as HTMLInputElement).value.trim() || "auto" })}
              />
            </label>
            <label title="Where a block's guesses come from: copies of what followed the last tokens earlier in the text, or the model's own predictions (plain Jacobi). Either way the answer is the greedy one; only the speed differs.">
              guesses
              <select
                value={s.guesses ?? "context"}
                disabled={props.disabled}
                data-testid="setting-guesses"
                onChange={(e) =>
                  set({ guesses: (e.target as HTMLSelectElement).value as ChatSettings["guesses"] })
                }
              >
                <option value="context">from context</option>
                <option value="jacobi">model's own</option>
              </select>
            </label>
          </>
        ) : (
          <label>
            temperature
            <input
              type="number"
              min={0}
              max={2}
              step={0.1}
              value={s.temperature}
              disabled={props.disabled}
              onChange={(e) => set({ temperature: Number((e.target as HTMLInputElement).value) })}
            />
          </label>
        )}
        <label>
          max tokens
          <input
            type="number"
            min={1}
            value={s.max_tokens}
            disabled={props.disabled}
            data-testid="setting-max-tokens"
            onChange={(e) => set({ max_tokens: Number((e.target as HTMLInputElement).value) })}
          />
        </label>
        <button
          class={saved.trim() ? "on" : ""}
          data-testid="setting-system-toggle"
          title="The instructions the model reads before the conversation"
          onClick={() => setOpen(!open)}
        >
          system prompt{saved.trim() ? " (set)" : ""}
        </button>
      </div>
      {open && (
        <div class="settings system">
          <textarea
            value={system}
            rows={3}
            disabled={props.disabled}
            data-testid="setting-system"
            placeholder="Empty: the model's own default from its chat template"
            onInput={(e) => setSystem((e.target as HTMLTextAreaElement).value)}
            onBlur={commit}
          />
        </div>
      )}
    </>
  );
}
