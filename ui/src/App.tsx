// The app: model bar on top, conversations on the left, the chat (or the race, or training) in
// the middle, the Jacobi visualizer on the right.

import { useEffect, useRef, useState } from "preact/hooks";
import { api, errorText } from "./api";
import { FrameBatcher } from "./batch";
import { Messages } from "./chat/Messages";
import { SettingsBar } from "./chat/Settings";
import { Sidebar } from "./chat/Sidebar";
import { TrainingPanel } from "./training/Training";
import { ModelBar } from "./ModelBar";
import { RacePanel, type RaceResult } from "./Race";
import { emptyViz, reduce, replayState, type VizInput, type VizState } from "./visualizer/reduce";
import { Visualizer } from "./visualizer/Visualizer";
import type {
  ChatEvent,
  ChatSettings,
  Conversation,
  ModelEntry,
  ModelInfo,
  RaceEvent,
  StoredMessage,
} from "./types";

const DEFAULT_SETTINGS: ChatSettings = {
  mode: "jacobi",
  block: "auto",
  max_tokens: 512,
  temperature: 0,
  guesses: "context",
  system: "",
};

export function App() {
  const [models, setModels] = useState<ModelEntry[]>([]);
  const [current, setCurrent] = useState<ModelInfo | null>(null);
  const [loading, setLoading] = useState<string | null>(null);
  const [fetching, setFetching] = useState<string[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  // Said once at start (the conversations' file could not be used), kept until dismissed.
  const [notice, setNotice] = useState<string | null>(null);
  const [conversations, setConversations] = useState<Conversation[]>([]);
  const [query, setQuery] = useState("");
  const [activeId, setActiveId] = useState<number | null>(null);
  const [messages, setMessages] = useState<StoredMessage[]>([]);
  const [settings, setSettings] = useState<ChatSettings>(DEFAULT_SETTINGS);
  const [busy, setBusy] = useState(false);
  const [streaming, setStreaming] = useState<string | null>(null);
  // A long prompt's way through the model before the first token: tokens done of total.
  const [reading, setReading] = useState<{ done: number; total: number } | null>(null);
  const [draft, setDraft] = useState("");
  const [viz, setViz] = useState<VizState>(emptyViz());
  const [vizLive, setVizLive] = useState(false);
  const [vizTitle, setVizTitle] = useState("");
  const [arSpeed, setArSpeed] = useState<number | null>(null);
  const [tab, setTab] = useState<"chat" | "race" | "train">("chat");
  const [raceRun, setRaceRun] = useState<{ lane: string; ar: string; jacobi: string } | null>(null);
  const [raceResult, setRaceResult] = useState<RaceResult | null>(null);
  const activeRef = useRef<number | null>(null);
  activeRef.current = activeId;
  // The last settings change on its way to the database: an answer waits for it, so that a
  // system prompt committed by the Send click's blur applies to that answer.
  const savingSettings = useRef<Promise<void>>(Promise.resolve());

  const refreshConversations = async (q = query) => setConversations(await api.listConversations(q));
  const refreshModels = async () => setModels(await api.listModels());

  const loadModel = async (path: string) => {
    setLoading(path);
    setError(null);
    try {
      setCurrent(await api.loadModel(path));
      setArSpeed(null);
    } catch (e) {
      setError(`Could not load ${path}: ${errorText(e)}`);
    } finally {
      setLoading(null);
    }
  };

  useEffect(() => {
    (async () => {
      try {
        setNotice(await api.startupNotice());
        await Promise.all([refreshModels(), refreshConversations("")]);
        setCurrent(await api.currentModel());
        const first = await api.startupModel();
        if (first) await loadModel(first);
      } catch (e) {
        setError(errorText(e));
      }
    })();
  }, []);

  useEffect(() => {
    const t = setTimeout(() => refreshConversations(query).catch((e) => setError(errorText(e))), 150);
    return () => clearTimeout(t);
  }, [query]);

  const open = async (id: number) => {
    const c = conversations.find((c) => c.id === id);
    setActiveId(id);
    setSettings(c?.settings ?? DEFAULT_SETTINGS);
    setMessages(await api.getMessages(id));
    setTab("chat");
  };

  // A new chat starts with the settings shown, including changes made before its first message.
  const newChat = async () => {
    const c = await api.createConversation(settings);
    await refreshConversations();
    setActiveId(c.id);
    setSettings(c.settings);
    setMessages([]);
    setTab("chat");
    return c;
  };

  const changeSettings = (s: ChatSettings) => {
    setSettings(s);
    if (activeId === null) return;
    const id = activeId;
    savingSettings.current = (async () => {
      try {
        await api.updateSettings(id, s);
        setError(null);
        await refreshConversations();
      } catch (e) {
        setError(errorText(e));
      }
    })();
  };

  /** Streams an answer: events are applied once per animation frame. `shown`: the text the
   * answer already has (one being continued). */
  const stream = async (
    run: (on: (e: ChatEvent) => void) => Promise<StoredMessage>,
    title: string,
    shown = "",
  ) => {
    setBusy(true);
    setStreaming(shown);
    setReading(null);
    setViz(emptyViz());
    setVizLive(true);
    setVizTitle(title);
    setError(null);
    const batcher = new FrameBatcher<ChatEvent>((events) => {
      const inputs: VizInput[] = [];
      let text = "";
      for (const e of events) {
        if (e.kind === "started" && e.user_message) {
          const m = e.user_message;
          setMessages((ms) => [...ms, m]);
        } else if (e.kind === "prefill_progress") {
          setReading({ done: e.done, total: e.total });
        } else if (e.kind === "prefill") {
          setReading(null);
        } else if (e.kind === "text") {
          text += e.delta;
          inputs.push({ kind: "tokens", ids: e.ids });
        } else if (e.kind === "iteration") {
          inputs.push({ kind: "iteration", iteration: e });
        } else if (e.kind === "done") {
          if (e.ar_tokens_per_second) setArSpeed(e.ar_tokens_per_second);
        }
      }
      if (text) setStreaming((s) => (s ?? "") + text);
      if (inputs.length) setViz((v) => reduce(v, inputs));
    });
    try {
      await run((e) => batcher.push(e));
    } catch (e) {
      setError(errorText(e));
    } finally {
      batcher.drain();
      setBusy(false);
      setStreaming(null);
      setReading(null);
      setVizLive(false);
      if (activeRef.current !== null) setMessages(await api.getMessages(activeRef.current));
      await refreshConversations();
    }
  };

  const send = async () => {
    const text = draft.trim();
    if (!text || busy) return;
    await savingSettings.current;
    let id = activeId;
    if (id === null) id = (await newChat()).id;
    setDraft("");
    await stream((on) => api.sendMessage(id!, text, on), text.slice(0, 60));
  };

  const regenerate = async () => {
    if (activeId === null || busy) return;
    await savingSettings.current;
    setMessages((ms) => (ms.length && ms[ms.length - 1].role === "assistant" ? ms.slice(0, -1) : ms));
    await stream((on) => api.regenerate(activeId, on), "regenerated answer");
  };

  // The last answer goes on from where it stopped, growing in place.
  const continueAnswer = async () => {
    const last = messages[messages.length - 1];
    if (activeId === null || busy || last?.role !== "assistant") return;
    await savingSettings.current;
    setMessages((ms) => ms.filter((m) => m.id !== last.id));
    await stream((on) => api.continueAnswer(activeId, on), "continued answer", last.content);
  };

  // The question gets its new text; the messages after it go, here at once and on disk as the
  // answer starts.
  const edit = async (m: StoredMessage, text: string) => {
    if (activeId === null || busy || !text.trim()) return;
    await savingSettings.current;
    setMessages((ms) => {
      const i = ms.findIndex((x) => x.id === m.id);
      return i < 0 ? ms : [...ms.slice(0, i), { ...m, content: text }];
    });
    await stream((on) => api.editMessage(activeId, m.id, text, on), `edited: ${text.slice(0, 52)}`);
  };

  // Escape stops a running answer or race, as the Stop button does.
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === "Escape" && busy) api.stop();
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [busy]);

  const replay = (m: StoredMessage) => {
    if (!m.trajectory || !m.stats) return;
    setViz(replayState(m.trajectory, m.stats.token_ids));
    setVizLive(false);
    setVizTitle(`replay: ${m.content.slice(0, 60)}`);
  };

  const race = async (prompt: string) => {
    setBusy(true);
    setRaceResult(null);
    setViz(emptyViz());
    setVizLive(true);
    setVizTitle(`race: ${prompt.slice(0, 60)}`);
    const texts = { lane: "ar", ar: "", jacobi: "" };
    setRaceRun({ ...texts });
    const batcher = new FrameBatcher<RaceEvent>((events) => {
      const inputs: VizInput[] = [];
      for (const e of events) {
        if (e.kind === "finished") {
          setRaceResult(e);
          setArSpeed(e.ar.tokens_per_second);
        } else {
          texts.lane = e.lane;
          if (e.event.kind === "text") {
            texts[e.lane] += e.event.delta;
            if (e.lane === "jacobi") inputs.push({ kind: "tokens", ids: e.event.ids });
          } else if (e.event.kind === "iteration" && e.lane === "jacobi") {
            inputs.push({ kind: "iteration", iteration: e.event });
          }
        }
      }
      setRaceRun({ ...texts });
      if (inputs.length) setViz((v) => reduce(v, inputs));
    });
    try {
      await api.race(prompt, settings, (e) => batcher.push(e));
    } catch (e) {
      setError(errorText(e));
    } finally {
      batcher.drain();
      setBusy(false);
      setVizLive(false);
    }
  };

  const exportConversation = async (id: number, format: "markdown" | "json") => {
    try {
      const path = await api.exportConversation(id, format);
      setError(null);
      alertInfo(`Exported to ${path}`);
    } catch (e) {
      setError(errorText(e));
    }
  };
  const [info, setInfo] = useState<string | null>(null);
  const alertInfo = (s: string) => {
    setInfo(s);
    setTimeout(() => setInfo(null), 6000);
  };

  return (
    <div class="app">
      <ModelBar
        models={models}
        current={current}
        loading={loading}
        fetching={fetching}
        onLoad={loadModel}
        onFetch={async () => {
          setFetching([]);
          try {
            const path = await api.fetchDefaultModel((e) => {
              if (e.kind === "log" && e.line) setFetching((l) => [...(l ?? []), e.line!]);
            });
            await refreshModels();
            await loadModel(path);
          } catch (e) {
            setError(errorText(e));
          } finally {
            setFetching(null);
          }
        }}
      />
      {notice && (
        <div class="error" data-testid="notice" title="click to dismiss" onClick={() => setNotice(null)}>
          {notice}
        </div>
      )}
      {error && (
        <div class="error" data-testid="error" onClick={() => setError(null)}>
          {error}
        </div>
      )}
      {info && <div class="info">{info}</div>}
      <div class="main">
        <Sidebar
          conversations={conversations}
          activeId={activeId}
          query={query}
          onQuery={setQuery}
          onNew={newChat}
          onOpen={open}
          onRename={async (id, title) => {
            try {
              await api.renameConversation(id, title);
              await refreshConversations();
            } catch (e) {
              setError(errorText(e));
            }
          }}
          onDelete={async (id) => {
            await api.deleteConversation(id);
            if (id === activeId) {
              setActiveId(null);
              setMessages([]);
            }
            await refreshConversations();
          }}
          onExport={exportConversation}
        />
        <div class="center">
          <nav class="tabs">
            <button class={tab === "chat" ? "on" : ""} onClick={() => setTab("chat")}>
              Chat
            </button>
            <button class={tab === "race" ? "on" : ""} data-testid="tab-race" onClick={() => setTab("race")}>
              Race
            </button>
            <button class={tab === "train" ? "on" : ""} data-testid="tab-train" onClick={() => setTab("train")}>
              Train
            </button>
          </nav>
          {/* Kept mounted while hidden: a running job keeps streaming into it. */}
          <div class="tabpane" hidden={tab !== "train"}>
            <TrainingPanel
              current={current}
              conversations={conversations}
              onModelsChanged={() => refreshModels().catch((e) => setError(errorText(e)))}
              onChatWith={async (path) => {
                await refreshModels();
                await loadModel(path);
                setActiveId(null);
                setMessages([]);
                setTab("chat");
              }}
            />
          </div>
          {tab === "train" ? null : tab === "chat" ? (
            <>
              <SettingsBar settings={settings} disabled={busy} onChange={changeSettings} />
              <Messages
                messages={messages}
                streaming={streaming}
                reading={reading}
                busy={busy}
                onReplay={replay}
                onRegenerate={regenerate}
                onEdit={edit}
                onContinue={continueAnswer}
              />
              <div class="composer">
                <textarea
                  value={draft}
                  placeholder={current ? "Ask something (Enter to send, Shift+Enter for a new line)" : "Load a model first"}
                  data-testid="composer"
                  onInput={(e) => setDraft((e.target as HTMLTextAreaElement).value)}
                  onKeyDown={(e) => {
                    if (e.key === "Enter" && !e.shiftKey) {
                      e.preventDefault();
                      send();
                    }
                  }}
                />
                {busy ? (
                  <button class="stop" data-testid="stop" title="Esc" onClick={() => api.stop()}>
                    Stop
                  </button>
                ) : (
                  <button class="primary" data-testid="send" disabled={!draft.trim() || !current} onClick={send}>
                    Send
                  </button>
                )}
              </div>
            </>
          ) : (
            <RacePanel busy={busy || !current} running={raceRun} result={raceResult} onRace={race} />
          )}
        </div>
        <Visualizer viz={viz} live={vizLive} arTokensPerSecond={arSpeed} title={vizTitle} />
      </div>
    </div>
  );
}
