"use client";
// One assistant answer: route decision, citations, the streamed text, and what it cost.
import { WithSignIn } from "@/components/SignInPrompt";

import { Markdown } from "@/components/Markdown";
import type { AnswerTurn } from "@/lib/conversation";
import { percent, usd } from "@/lib/format";
import { citeId } from "@/lib/markdown";

export interface AnswerProps {
  answer: AnswerTurn;
  /** Offered on a failed answer that is the latest turn. */
  onRetry?: () => void;
}

const STATE_LABEL: Record<AnswerTurn["state"], string> = {
  streaming: "Answering…",
  done: "Answer",
  stopped: "Stopped",
  error: "Failed",
};

export function Answer({ answer, onRetry }: AnswerProps) {
  const { decision, done, error } = answer;
  const fallback = done && done.fallbackPath.length > 1 ? done.fallbackPath : null;
  return (
    <article
      className={`answer answer-${answer.state}`}
      data-testid="answer"
      data-state={answer.state}
      data-first-token-ms={answer.firstTokenMs ?? ""}
      data-request-id={decision?.requestId ?? ""}
      aria-busy={answer.state === "streaming"}
      aria-label={STATE_LABEL[answer.state]}
    >
      <div className="answer-head">
        {decision ? (
          <span className="badge badge-tier" data-testid="tier-badge" title={`${decision.tierName} tier`}>
            Tier {decision.tier}
          </span>
        ) : null}
        {done?.cached ? (
          <span className="badge" data-testid="cached">
            Cached
          </span>
        ) : null}
        {done?.degraded ? (
          <span className="badge badge-warn" data-testid="degraded">
            ⚠ Degraded
          </span>
        ) : null}
        {done?.knowledgeUnavailable ? (
          <span className="badge badge-warn" data-testid="knowledge-unavailable">
            ⚠ Knowledge base unavailable
          </span>
        ) : null}
        {answer.state === "stopped" ? (
          <span className="badge badge-muted" data-testid="stopped">
            ■ Stopped
          </span>
        ) : null}
        {answer.state === "streaming" ? <span className="typing">Answering…</span> : null}
      </div>

      {decision ? (
        <details className="decision" data-testid="decision">
          <summary>
            Intent {decision.intent} ({percent(decision.confidence)}) · complexity {decision.complexity} · segment {decision.segment}
          </summary>
          <div className="decision-body">
            <p className="label">Why this tier</p>
            <ul>
              {decision.reasons.map((reason, i) => (
                <li key={i} data-testid="reason">
                  {reason}
                </li>
              ))}
            </ul>
            <dl className="pairs">
              <dt>Policy version</dt>
              <dd>{decision.policyVersion || "—"}</dd>
              <dt>Request id</dt>
              <dd>
                <code>{decision.requestId || "—"}</code>
              </dd>
            </dl>
          </div>
        </details>
      ) : null}

      {answer.citations.length > 0 ? (
        <div className="citations">
          <p className="label" id={`sources-${answer.key}`}>
            Sources
          </p>
          <ol data-testid="citations" aria-labelledby={`sources-${answer.key}`}>
            {answer.citations.map((c) => (
              <li key={c.index} data-testid="citation" id={citeId(answer.key, c.index)}>
                <span className="cite-index">[{c.index}]</span> <span className="cite-title">{c.title || c.documentId}</span>{" "}
                <span className="cite-score" title="Relevance, 0 to 1">
                  score {c.score.toFixed(2)}
                </span>
              </li>
            ))}
          </ol>
        </div>
      ) : null}

      {answer.restart ? (
        <p className="note" data-testid="restart-note">
          Another model took over; the answer restarted.
          {answer.restart.reason ? ` (${answer.restart.reason})` : ""}
        </p>
      ) : null}

      <div className="answer-text markdown" data-testid="answer-text">
        <Markdown text={answer.text} answerKey={answer.key} citationIndices={answer.citations.map((c) => c.index)} />
      </div>

      {error ? (
        <div className="error" role="alert" data-testid="error" data-code={error.code}>
          <p>
            <WithSignIn message={error.message} signIn={error.signIn} />
          </p>
          {onRetry ? (
            <button type="button" className="button" data-testid="retry" onClick={onRetry}>
              Retry
            </button>
          ) : null}
        </div>
      ) : null}

      {done ? (
        <p className="answer-meta" data-testid="answer-meta">
          <span>{done.model}</span> · <span>{done.deployment}</span> ·{" "}
          <span>
            {done.promptTokens} prompt + {done.completionTokens} completion tokens
          </span>{" "}
          · <span data-cost-micro-usd={done.costMicroUsd}>{usd(done.costMicroUsd, 6)}</span>
          {answer.firstTokenMs !== undefined ? <> · first token {answer.firstTokenMs} ms</> : null}
        </p>
      ) : null}

      {fallback ? (
        <p className="fallback">
          Fallback path: <span data-testid="fallback-path">{fallback.join(" → ")}</span>
        </p>
      ) : null}
    </article>
  );
}
