"use client";
// The chat: sends the conversation to RouterService.Chat over gRPC-Web and renders each event
// of the answer's stream as it arrives.
import { create } from "@bufbuild/protobuf";
import { useCallback, useEffect, useRef, useState, type FormEvent, type KeyboardEvent, type ReactNode } from "react";
import { flushSync } from "react-dom";

import { Answer } from "@/components/Answer";
import { Markdown } from "@/components/Markdown";
import { SignInLink, SignInPrompt } from "@/components/SignInPrompt";
import { ChatRequestSchema } from "@/gen/tiermesh/router/v1/router_service_pb";
import { useConfig } from "@/lib/config";
import {
  citationView,
  decisionView,
  doneView,
  loadConversation,
  loadSessionCost,
  MAX_MESSAGE_CHARS,
  newAnswer,
  newKey,
  saveConversation,
  saveSessionCost,
  toMessages,
  type AnswerTurn,
  type Turn,
} from "@/lib/conversation";
import { describeError } from "@/lib/errors";
import { usd } from "@/lib/format";
import { isExpired, type Session } from "@/lib/session";
import { CHAT_TIMEOUT_MS, callOptions, clients } from "@/lib/transport";
import { useSession } from "@/lib/useSession";

const NO_CITATIONS: readonly number[] = [];

export function Chat() {
  const session = useSession();
  const config = useConfig();
  let body: ReactNode;
  if (session === undefined || config.status === "loading") {
    body = <p className="muted">Loading…</p>;
  } else if (session === null) {
    body = <SignInPrompt what="chat" />;
  } else if (config.status === "error") {
    body = (
      <p className="error" role="alert">
        {config.message}
      </p>
    );
  } else {
    body = <Conversation session={session} edgeUrl={config.config.edgeUrl} />;
  }
  return (
    <section className="chat" aria-labelledby="chat-title">
      <h1 id="chat-title" className="sr-only">
        Chat
      </h1>
      {body}
    </section>
  );
}

function Conversation({ session, edgeUrl }: { session: Session; edgeUrl: string }) {
  const [turns, setTurns] = useState<Turn[]>(loadConversation);
  const [sessionCost, setSessionCost] = useState<number>(loadSessionCost);
  const [draft, setDraft] = useState("");
  const [expired, setExpired] = useState(false);
  const [announcement, setAnnouncement] = useState("");
  const abortRef = useRef<AbortController | null>(null);
  const endRef = useRef<HTMLDivElement>(null);
  const composerRef = useRef<HTMLTextAreaElement>(null);
  const turnCount = useRef(turns.length);
  const streaming = turns.some((t) => t.kind === "assistant" && t.state === "streaming");

  // Saved when no answer is streaming: a write per delta would cost more than it keeps.
  useEffect(() => {
    if (!streaming) saveConversation(turns);
  }, [turns, streaming]);

  useEffect(() => saveSessionCost(sessionCost), [sessionCost]);

  // Ready to type on arrival; leaving the page (or signing out) cancels the answer streaming.
  useEffect(() => {
    composerRef.current?.focus();
    return () => abortRef.current?.abort();
  }, []);

  // Follow the newest message: smoothly for a new turn (unless reduced motion), and instantly
  // while text streams in, but only if the reader has not scrolled away.
  useEffect(() => {
    const grew = turns.length > turnCount.current;
    turnCount.current = turns.length;
    const end = endRef.current;
    if (!end) return;
    const reduce = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    const nearBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 160;
    if (grew || nearBottom) end.scrollIntoView({ block: "end", behavior: grew && !reduce ? "smooth" : "auto" });
  }, [turns]);

  const stop = useCallback(() => {
    abortRef.current?.abort();
    composerRef.current?.focus(); // the Stop button goes away; keep the keyboard in the composer
  }, []);

  useEffect(() => {
    if (!streaming) return;
    const onKey = (e: globalThis.KeyboardEvent) => {
      if (e.key === "Escape") stop();
    };
    document.addEventListener("keydown", onKey);
    return () => document.removeEventListener("keydown", onKey);
  }, [streaming, stop]);

  const update = (key: string, change: (a: AnswerTurn) => AnswerTurn) =>
    setTurns((all) => all.map((t) => (t.key === key && t.kind === "assistant" ? change(t) : t)));

  async function run(history: Turn[], key: string) {
    const controller = new AbortController();
    abortRef.current = controller;
    const request = create(ChatRequestSchema, { messages: toMessages(history) });
    const started = performance.now();
    let firstDelta = true;
    let finished = false;
    try {
      const stream = clients(edgeUrl).router.chat(request, callOptions(session.token, controller.signal, CHAT_TIMEOUT_MS));
      for await (const { event } of stream) {
        switch (event.case) {
          case "decision": {
            const decision = decisionView(event.value);
            update(key, (a) => ({ ...a, decision }));
            break;
          }
          case "citation": {
            const citation = citationView(event.value);
            update(key, (a) => ({ ...a, citations: [...a.citations.filter((c) => c.index !== citation.index), citation] }));
            break;
          }
          case "delta": {
            const text = event.value.text;
            if (firstDelta) {
              // The first token goes on screen now, together with when it did.
              firstDelta = false;
              const ms = Math.max(1, Math.round(performance.now() - started));
              flushSync(() => update(key, (a) => ({ ...a, text: a.text + text, firstTokenMs: ms })));
            } else {
              update(key, (a) => ({ ...a, text: a.text + text }));
            }
            break;
          }
          case "restart": {
            const restart = { failedDeployment: event.value.failedDeployment, reason: event.value.reason };
            update(key, (a) => ({ ...a, text: "", restart }));
            break;
          }
          case "done": {
            const done = doneView(event.value);
            finished = true;
            update(key, (a) => ({ ...a, done, state: "done" }));
            setSessionCost((c) => c + done.costMicroUsd);
            setAnnouncement(`Answer finished${done.degraded ? " (degraded)" : ""}.`);
            break;
          }
        }
      }
      if (!finished) {
        update(key, (a) => ({
          ...a,
          state: "error",
          error: { code: "incomplete", signIn: false, message: "The answer ended before it was complete. Please try again." },
        }));
        setAnnouncement("The answer failed.");
      }
    } catch (err) {
      if (finished) return; // the answer was whole; a late transport hiccup changes nothing
      if (controller.signal.aborted) {
        update(key, (a) => ({ ...a, state: "stopped" }));
        setAnnouncement("Answer stopped.");
      } else {
        const error = describeError(err);
        update(key, (a) => ({ ...a, state: "error", error }));
        setAnnouncement(`The answer failed: ${error.message}`);
      }
    } finally {
      if (abortRef.current === controller) abortRef.current = null;
    }
  }

  function start(history: Turn[]) {
    if (isExpired(session)) {
      setExpired(true);
      return false;
    }
    setExpired(false);
    const answer = newAnswer();
    setTurns([...history, answer]);
    setAnnouncement("");
    void run(history, answer.key);
    return true;
  }

  function send(e?: FormEvent) {
    e?.preventDefault();
    const text = draft.trim();
    if (!text || streaming) return;
    if (start([...turns, { kind: "user", key: newKey("u"), text }])) setDraft("");
  }

  function retry(key: string) {
    if (streaming) return;
    const at = turns.findIndex((t) => t.key === key);
    if (at > 0) start(turns.slice(0, at));
  }

  function newChat() {
    abortRef.current?.abort();
    abortRef.current = null;
    setTurns([]);
    setExpired(false);
    setAnnouncement("");
  }

  function onComposerKey(e: KeyboardEvent<HTMLTextAreaElement>) {
    if (e.key === "Enter" && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      send();
    }
  }

  const last = turns[turns.length - 1];
  return (
    <>
      <div className="chat-toolbar">
        <p className="session-cost">
          This chat session:{" "}
          <span data-testid="session-cost" data-cost-micro-usd={sessionCost}>
            {usd(sessionCost, 6)}
          </span>
        </p>
        <button type="button" className="button button-secondary" data-testid="new-chat" onClick={newChat}>
          New chat
        </button>
      </div>

      <ol className="turns" aria-label="Conversation">
        {turns.length === 0 ? (
          <li className="empty muted">
            Ask anything. The router picks the model tier that fits your question, and shows you why.
          </li>
        ) : null}
        {turns.map((turn) =>
          turn.kind === "user" ? (
            <li key={turn.key} className="turn turn-user">
              <p className="who">You</p>
              <div className="user-text markdown" data-testid="user-message">
                <Markdown text={turn.text} answerKey={turn.key} citationIndices={NO_CITATIONS} />
              </div>
            </li>
          ) : (
            <li key={turn.key} className="turn turn-assistant">
              <p className="who">tiermesh</p>
              <Answer
                answer={turn}
                onRetry={turn.state === "error" && turn === last && !streaming ? () => retry(turn.key) : undefined}
              />
            </li>
          ),
        )}
      </ol>

      <p className="sr-only" aria-live="polite" data-testid="announcer">
        {announcement}
      </p>

      <form className="composer" onSubmit={send}>
        {expired ? (
          <p className="error" role="alert" data-testid="session-expired">
            Your session has expired. <SignInLink /> again to keep chatting.
          </p>
        ) : null}
        <label htmlFor="composer" className="sr-only">
          Message
        </label>
        <textarea
          id="composer"
          ref={composerRef}
          data-testid="composer"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
          onKeyDown={onComposerKey}
          placeholder="Message tiermesh…"
          rows={2}
          maxLength={MAX_MESSAGE_CHARS}
          aria-describedby="composer-hint"
        />
        <p id="composer-hint" className="composer-hint muted">
          Enter sends · Shift+Enter adds a line · Esc stops an answer
        </p>
        <div className="composer-actions">
          {streaming ? (
            <button type="button" className="button button-danger" data-testid="stop" onClick={stop}>
              Stop
            </button>
          ) : null}
          <button type="submit" className="button" data-testid="send" disabled={streaming || !draft.trim()}>
            Send
          </button>
        </div>
      </form>
      <div ref={endRef} className="scroll-end" />
    </>
  );
}
