import { Crosshair, Target } from "lucide-react";
import { Segmented } from "@/components/ui/Segmented";
import { Select } from "@/components/ui/Select";
import { Fragment, useMemo, useState } from "react";
import { Link } from "react-router";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { formatNumber, formatPercent, formatSigned } from "@/lib/format";
import { queryKeys } from "@/lib/queryKeys";
import { normalizeAnswer } from "@/lib/textMatch";
import { useQuery } from "@tanstack/react-query";
import {
  columnSummary,
  deltaLogprob,
  FILTERS,
  isRight,
  matches,
  MODEL_LABEL,
  MODELS,
  scoreOf,
  SORTS,
  view,
  type Answer,
  type Filter,
  type Model,
  type Score,
  type Sort,
} from "./answers";
import "./answers.css";

type Run = Schemas["RunOut"];

function ScoreBadge({ score }: { score: Score | null }) {
  if (!score) return null;
  if (score.exact) return <span className="badge badge-success">✓ exact</span>;
  if (score.contains) return <span className="badge badge-success">✓ contains</span>;
  if (score.f1 > 0) return <span className="badge badge-warning">~ F1 {score.f1.toFixed(2)}</span>;
  return <span className="badge badge-error">✗ miss</span>;
}

/** The answer with the words it shares with the reference marked: where it agrees, and
 * (unmarked) where it differs. */
function AnswerText({ text, reference }: { text: string; reference: string | null | undefined }) {
  const ref = useMemo(
    () =>
      new Set(
        normalizeAnswer(reference ?? "")
          .split(" ")
          .filter(Boolean),
      ),
    [reference],
  );
  if (!reference) return <>{text}</>;
  const parts = text.split(/(\s+)/);
  return (
    <>
      {parts.map((part, i) => {
        const word = normalizeAnswer(part);
        return word && ref.has(word) ? (
          <mark key={i} className="ref-word">
            {part}
          </mark>
        ) : (
          <Fragment key={i}>{part}</Fragment>
        );
      })}
    </>
  );
}

function AnswerCell({ answer, model }: { answer: Answer; model: Model }) {
  const score = scoreOf(answer, model);
  return (
    <td className={`answer-cell ${score ? (isRight(score) ? "right-answer" : "wrong-answer") : ""}`}>
      <div className="answer-text mono">
        <AnswerText text={answer[model]} reference={answer.reference} />
      </div>
      <div className="answer-meta">
        <ScoreBadge score={score} />
        {score?.logprob != null ? <span className="dim mono">log p(ref) {formatNumber(score.logprob, 3)}</span> : null}
      </div>
    </td>
  );
}

function DeltaChart({ answers }: { answers: Answer[] }) {
  const rows = answers
    .map((a, i) => ({ i: i + 1, id: a.eval_id, d: deltaLogprob(a) }))
    .filter((r): r is { i: number; id: string; d: number } => r.d != null);
  if (rows.length === 0) return <p className="panel-body dim">No log-probabilities stored for this run.</p>;
  const max = Math.max(...rows.map((r) => Math.abs(r.d)), 1e-9);
  const w = 640;
  const h = 150;
  const mid = h / 2;
  const bw = Math.max(Math.min((w - 40) / rows.length - 4, 40), 2);
  return (
    <svg
      className="delta-chart"
      viewBox={`0 0 ${w} ${h + 18}`}
      role="img"
      aria-label="Change in log-probability of the reference per question"
    >
      <line x1={30} x2={w} y1={mid} y2={mid} className="axis" />
      {rows.map((r, k) => {
        const x = 34 + k * ((w - 40) / rows.length);
        const bh = (Math.abs(r.d) / max) * (mid - 12);
        return (
          <g key={r.id}>
            <rect x={x} y={r.d >= 0 ? mid - bh : mid} width={bw} height={Math.max(bh, 1)} className={r.d >= 0 ? "up" : "down"}>
              <title>{`Q${r.i}: ${formatSigned(r.d, 3)}`}</title>
            </rect>
            {rows.length <= 30 ? (
              <text x={x + bw / 2} y={h + 12} textAnchor="middle" className="tick">
                Q{r.i}
              </text>
            ) : null}
          </g>
        );
      })}
      <text x={0} y={14} className="tick">
        +{formatNumber(max, 2)}
      </text>
      <text x={0} y={h - 4} className="tick">
        −{formatNumber(max, 2)}
      </text>
    </svg>
  );
}

/** Base, few-shot and fine-tuned answers to every evaluation question, side by side with
 * the reference, scored; filters for the cases a researcher looks for. */
export function AnswersPanel({ run, onOpenInfluence }: { run: Run; onOpenInfluence?: (evalId: string) => void }) {
  const results = useQuery({
    queryKey: queryKeys.runResults(run.id),
    queryFn: () => unwrap(api.GET("/api/runs/{run_id}/results", { params: { path: { run_id: run.id } } })),
    staleTime: 5 * 60_000,
  });
  const [filter, setFilter] = useState<Filter>("all");
  const [sort, setSort] = useState<Sort>("order");
  const answers = useMemo(() => results.data?.answers ?? [], [results.data]);
  const rows = useMemo(() => view(answers, filter, sort), [answers, filter, sort]);
  const counts = useMemo(
    () => Object.fromEntries(FILTERS.map((f) => [f.value, answers.filter((a) => matches(a, f.value)).length])),
    [answers],
  );
  const stillWrong = useMemo(() => answers.filter((a) => matches(a, "still_wrong")), [answers]);

  if (results.isPending) return <SkeletonRows rows={8} label="Loading answers" />;
  if (results.isError) return <ErrorState error={results.error} onRetry={() => void results.refetch()} />;
  if (answers.length === 0) return <EmptyState title="No answers yet">The inference stage stores them when it completes.</EmptyState>;

  const aggregates = results.data?.answer_scores;
  return (
    <div className="col" style={{ gap: 12 }}>
      <section className="panel" aria-label="Answers comparison">
        <div className="panel-header">
          <h2>Answers</h2>
          <span className="meta">
            {answers.length} questions · greedy decoding · up to {run.config.max_new_tokens} new tokens · few-shot shows{" "}
            {run.config.few_shot_k} training pairs
          </span>
        </div>
        <div className="answers-toolbar">
          <Segmented
            label="Show"
            value={filter}
            options={FILTERS.map((f) => ({
              value: f.value,
              title: f.title,
              label: (
                <>
                  {f.label} <span className="dim num">{counts[f.value]}</span>
                </>
              ),
            }))}
            onChange={setFilter}
          />
          <span className="grow" />
          <label htmlFor="answers-sort" className="muted">
            Sort
          </label>
          <Select id="answers-sort" width={230} value={sort} options={SORTS} onChange={setSort} />
        </div>
        <div className="panel-scroll">
          <table className="table answers-table" aria-label="Answers">
            <thead>
              <tr>
                <th className="idx">#</th>
                <th>Question</th>
                <th>Reference</th>
                {MODELS.map((m) => (
                  <th key={m}>
                    <span className={`model-dot ${m}`} /> {MODEL_LABEL[m]}
                    {m === "few_shot" ? <span className="th-sub"> k = {run.config.few_shot_k}</span> : null}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {rows.length === 0 ? (
                <tr>
                  <td colSpan={6} className="dim" style={{ padding: 18, textAlign: "center" }}>
                    No question matches this filter.
                  </td>
                </tr>
              ) : null}
              {rows.map(({ answer, index }) => (
                <tr key={answer.eval_id}>
                  <td className="idx">{index}</td>
                  <td className="question-cell">
                    {answer.question}
                    {onOpenInfluence ? (
                      <button
                        type="button"
                        className="icon-btn icon-btn-sm"
                        aria-label={`Open question ${index} in the influence explorer`}
                        title="Which training pairs drove this answer?"
                        onClick={() => onOpenInfluence(answer.eval_id)}
                      >
                        <Crosshair />
                      </button>
                    ) : null}
                  </td>
                  <td className="mono ref-cell">{answer.reference ?? <span className="dim">–</span>}</td>
                  {MODELS.map((m) => (
                    <AnswerCell key={m} answer={answer} model={m} />
                  ))}
                </tr>
              ))}
            </tbody>
            <tfoot>
              <tr>
                <td />
                <td colSpan={2} className="agg-label">
                  Column aggregate <span className="dim">· n = {columnSummary(answers, "base", aggregates?.base).questions}</span>
                </td>
                {MODELS.map((m) => {
                  const s = columnSummary(answers, m, aggregates?.[m]);
                  return (
                    <td key={m} className="agg">
                      <div>
                        <span className="dim">exact match</span>
                        <b className="mono">{formatPercent(s.exact, 1)}</b>
                      </div>
                      <div>
                        <span className="dim">contains</span>
                        <b className="mono">{formatPercent(s.contains, 1)}</b>
                      </div>
                      <div>
                        <span className="dim">token F1</span>
                        <b className="mono">{formatNumber(s.f1, 2)}</b>
                      </div>
                      <div>
                        <span className="dim">mean log p(ref)</span>
                        <b className="mono">{formatNumber(s.logprob, 3)}</b>
                      </div>
                    </td>
                  );
                })}
              </tr>
            </tfoot>
          </table>
        </div>
      </section>
      <div className="answers-lower">
        <section className="panel" aria-label="Change in log-probability">
          <div className="panel-header">
            <h2>Δ log p(reference)</h2>
            <span className="meta">fine-tuned − base, per question: learning shows here even when the text still misses</span>
          </div>
          <div className="panel-body">
            <DeltaChart answers={answers} />
          </div>
        </section>
        <section className="panel" aria-label="Still wrong">
          <div className="panel-header">
            <Target size={14} />
            <h2>Still wrong</h2>
            <span className="meta num">{stillWrong.length}</span>
          </div>
          <div className="panel-body col" style={{ gap: 10 }}>
            {stillWrong.length === 0 ? <span className="muted">Every fine-tuned answer states its reference.</span> : null}
            {stillWrong.slice(0, 6).map((a) => (
              <div key={a.eval_id} className="still-wrong">
                <div>{a.question}</div>
                <div className="mono">
                  → <span className="wrong">{a.fine_tuned}</span> <span className="dim">· reference</span> {a.reference}
                </div>
                {onOpenInfluence ? (
                  <Link
                    to={`?tab=influence&eval=${encodeURIComponent(a.eval_id)}`}
                    className="open-link"
                    onClick={(e) => {
                      e.preventDefault();
                      onOpenInfluence(a.eval_id);
                    }}
                  >
                    Open row in Influence →
                  </Link>
                ) : null}
              </div>
            ))}
          </div>
        </section>
      </div>
    </div>
  );
}
