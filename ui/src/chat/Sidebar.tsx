// Conversations: new, search, open, rename, delete, export.

import { useState } from "preact/hooks";
import type { Conversation } from "../types";

export function Sidebar(props: {
  conversations: Conversation[];
  activeId: number | null;
  query: string;
  onQuery: (q: string) => void;
  onNew: () => void;
  onOpen: (id: number) => void;
  onRename: (id: number, title: string) => void;
  onDelete: (id: number) => void;
  onExport: (id: number, format: "markdown" | "json") => void;
}) {
  const [editing, setEditing] = useState<number | null>(null);
  return (
    <aside class="sidebar">
      <button class="primary" data-testid="new-chat" onClick={props.onNew}>
        + New chat
      </button>
      <input
        placeholder="Search conversations"
        value={props.query}
        data-testid="search"
        onInput={(e) => props.onQuery((e.target as HTMLInputElement).value)}
      />
      <ul data-testid="conversations">
        {props.conversations.map((c) => (
          <li key={c.id} class={c.id === props.activeId ? "active" : ""} data-testid="conversation">
            {editing === c.id ? (
              <input
                autoFocus
                value={c.title}
                onKeyDown={(e) => {
                  const v = (e.target as HTMLInputElement).value;
                  if (e.key === "Enter") {
                    props.onRename(c.id, v);
                    setEditing(null);
                  } else if (e.key === "Escape") setEditing(null);
                }}
                onBlur={() => setEditing(null)}
              />
            ) : (
              <span class="title" onClick={() => props.onOpen(c.id)} onDblClick={() => setEditing(c.id)}>
                {c.title}
              </span>
            )}
            {c.id === props.activeId && (
              <span class="actions">
                <button title="rename" onClick={() => setEditing(c.id)}>
                  ✎
                </button>
                <button title="export as Markdown" onClick={() => props.onExport(c.id, "markdown")}>
                  md
                </button>
                <button title="export as JSON" onClick={() => props.onExport(c.id, "json")}>
                  json
                </button>
                <button
                  title="delete"
                  onClick={() => confirm(`Delete “${c.title}”?`) && props.onDelete(c.id)}
                >
                  delete
                </button>
              </span>
            )}
          </li>
        ))}
      </ul>
    </aside>
  );
}
