// The model picker: the default model (fetched on demand), downloaded and trained models, or
// any GGUF file / model folder by path. Loading runs on a worker thread in the app.

import { useState } from "preact/hooks";
import type { ModelEntry, ModelInfo } from "./types";

export function ModelBar(props: {
  models: ModelEntry[];
  current: ModelInfo | null;
  loading: string | null;
  fetching: string[] | null;
  onLoad: (path: string) => void;
  onFetch: () => void;
}) {
  const [path, setPath] = useState("");
  const def = props.models.find((m) => m.origin === "default");
  return (
    <div class="modelbar" data-testid="modelbar">
      <span class="brand">Fixpoint</span>
      <select
        data-testid="model-select"
        value={props.current?.path ?? ""}
        disabled={props.loading !== null}
        onChange={(e) => {
          const v = (e.target as HTMLSelectElement).value;
          if (v) props.onLoad(v);
        }}
      >
        <option value="">{props.current ? "" : "— pick a model —"}</option>
        {props.models
          .filter((m) => m.installed)
          .map((m) => (
            <option key={m.path} value={m.path}>
              {m.name} {m.origin === "trained" ? "(trained)" : ""}
            </option>
          ))}
        {props.current && !props.models.some((m) => m.path === props.current!.path) && (
          <option value={props.current.path}>{props.current.path}</option>
        )}
      </select>
      <input
        placeholder="or a .gguf file / model folder path"
        value={path}
        data-testid="model-path"
        onInput={(e) => setPath((e.target as HTMLInputElement).value)}
      />
      <button disabled={!path.trim() || props.loading !== null} data-testid="model-open" onClick={() => props.onLoad(path.trim())}>
        Open
      </button>
      {def && !def.installed && (
        <button disabled={props.fetching !== null} data-testid="fetch-default" onClick={props.onFetch}>
          Download default model
        </button>
      )}
      <span class="status" data-testid="model-status">
        {props.loading !== null ? (
          <>
            <progress /> loading {props.loading}…
          </>
        ) : props.fetching !== null ? (
          <>
            <progress /> {props.fetching[props.fetching.length - 1] ?? "starting download"}
          </>
        ) : props.current ? (
          `${(props.current.parameters / 1e6).toFixed(0)}M parameters · ${props.current.weights} · ${props.current.backend} · ${props.current.device}`
        ) : (
          "no model loaded"
        )}
      </span>
    </div>
  );
}
