import { useMemo, useState } from "react";
import { Link, useParams } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { Select } from "@/components/ui/Select";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { ApiError } from "@/lib/api/errors";
import { shortId } from "@/lib/format";
import { NotFound } from "@/app/NotFoundPage";
import { useLeaderboard, type Leaderboard, type LeaderboardRow } from "./api";
import "./benchmarks.css";

const COLUMNS = ["recall@1", "recall@5", "recall@10", "precision@5", "mrr", "map", "roc_auc"] as const;

type Over = "correct" | "all";

function MetricCell({ row, over, name }: { row: LeaderboardRow; over: Over; name: string }) {
  const part = (over === "correct" ? row.correct : row.all) ?? {};
  const m = part[name];
  if (!m || m.mean == null) return <td className="right num dim">–</td>;
  return (
    <td className="right num" title={`mean ${m.mean.toFixed(4)} · sd ${(m.std ?? 0).toFixed(4)} · ${m.n} queries`}>
      {m.mean.toFixed(3)}
      <span className="dim bench-sd"> ±{(m.std ?? 0).toFixed(2)}</span>
    </td>
  );
}

function LeaderboardTable({ board, over, selected, onSelect }: {
  board: Leaderboard; over: Over; selected: string; onSelect: (key: string) => void;
}) {
  return (
    <table className="table table-dense bench-table" aria-label="Leaderboard">
      <thead>
        <tr>
          <th className="right">#</th>
          <th>Method</th>
          <th>Kind</th>
          {COLUMNS.map((c) => (
            <th key={c} className="right">{c}</th>
          ))}
        </tr>
      </thead>
      <tbody>
        {board.rows.map((row) => {
          const key = `${row.method}:${row.variant}`;
          return (
            <tr
              key={key}
              className={key === selected ? "selected" : undefined}
              aria-selected={key === selected}
              onClick={() => onSelect(key)}
            >
              <td className="right num">{row.rank}</td>
              <td>
                <button type="button" className="link-button" onClick={() => onSelect(key)}>
                  {row.label}
                </button>
              </td>
              <td>
                <span className={`badge ${row.kind === "baseline" ? "" : "badge-info"}`}>{row.kind}</span>
              </td>
              {COLUMNS.map((c) => (
                <MetricCell key={c} row={row} over={over} name={c} />
              ))}
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function QueryDrillDown({ board, row }: { board: Leaderboard; row: LeaderboardRow | undefined }) {
  const [queryId, setQueryId] = useState(board.queries[0]?.id ?? "");
  const query = board.queries.find((q) => q.id === queryId) ?? board.queries[0];
  const documents = useMemo(() => new Map(board.documents.map((d) => [d.id, d])), [board.documents]);
  if (!query || !row) return null;
  const perQuery = row.per_query.find((p) => p.query_id === query.id);
  const relevant = new Set(query.relevant_ids);
  return (
    <section className="panel bench-drill" aria-label="Query drill-down">
      <div className="panel-header">
        <h2>Per query</h2>
        <label className="dim" htmlFor="bench-query">
          Query
        </label>
        <Select
          id="bench-query"
          width={170}
          value={query.id}
          onChange={setQueryId}
          options={board.queries.map((q) => ({
            value: q.id,
            label: `${q.id} ${q.correct == null ? "" : q.correct ? "✓ answered" : "✗ wrong"}`,
          }))}
        />
        <span className="meta">{row.label}</span>
      </div>
      <div className="panel-body">
        <p className="mono bench-question">
          {query.question} <span className="dim">→</span> <strong>{query.answer}</strong>{" "}
          {query.correct == null ? null : (
            <span className={`badge ${query.correct ? "badge-success" : "badge-error"}`}>
              {query.correct ? "answered correctly" : "answered wrongly"}
            </span>
          )}
        </p>
        {perQuery ? (
          <p className="dim bench-metrics">
            {COLUMNS.map((c) => `${c} ${perQuery.metrics[c] == null ? "–" : Number(perQuery.metrics[c]).toFixed(2)}`).join(" · ")}
          </p>
        ) : null}
        <ol className="bench-docs" aria-label="Top documents">
          {(perQuery?.top_documents ?? []).map((id) => {
            const doc = documents.get(id);
            return (
              <li key={id} className={relevant.has(id) ? "relevant" : undefined}>
                <span className="mono dim">{id}</span>
                {relevant.has(id) ? <span className="badge badge-success">relevant</span> : null}
                <span className="mono bench-doc-text">{doc?.text ?? ""}</span>
              </li>
            );
          })}
        </ol>
        <p className="dim">
          {query.relevant_ids.length} relevant documents; {(perQuery?.top_documents ?? []).filter((d) => relevant.has(d)).length} of
          them in this method's top {(perQuery?.top_documents ?? []).length}.
        </p>
      </div>
    </section>
  );
}

/** A benchmark run's leaderboard: every method and baseline against the ground truth,
 * with a per-query drill-down that marks the relevant documents. */
export function BenchmarkPage() {
  const { runId } = useParams();
  const board = useLeaderboard(runId);
  const [over, setOver] = useState<Over | null>(null);
  const [selected, setSelected] = useState("");
  usePageCrumbs([{ label: "Benchmarks" }, ...(runId ? [{ label: shortId(runId), mono: true }] : [])]);

  if (board.isError)
    return board.error instanceof ApiError && (board.error.status === 404 || board.error.status === 409) ? (
      <NotFound what="Benchmark run" />
    ) : (
      <ErrorState error={board.error} onRetry={() => void board.refetch()} />
    );
  if (!board.data) return <SkeletonRows rows={8} label="Loading the leaderboard" />;
  const data = board.data;
  const columns: Over = over ?? (data.correct_queries ? "correct" : "all");
  const key = selected || (data.rows[0] ? `${data.rows[0].method}:${data.rows[0].variant}` : "");
  const row = data.rows.find((r) => `${r.method}:${r.variant}` === key);
  return (
    <div className="page bench-page">
      <div className="page-header">
        <h1>Benchmark leaderboard</h1>
        <Link to={`/runs/${data.run_id}`} className="mono">
          run {shortId(data.run_id)}
        </Link>
        <StatusBadge status={data.status} />
        <span className="grow" />
        <span className="dim">
          {data.queries.length} queries · {data.documents.length} documents · fine-tuned accuracy{" "}
          {data.accuracy == null ? "unknown" : `${(100 * data.accuracy).toFixed(0)}%`}
        </span>
      </div>
      <section className="panel" aria-label="Benchmark">
        <div className="panel-header">
          <h2>Leaderboard</h2>
          <span className="meta">ranked by {data.ranked_by}</span>
          <span className="grow" />
          <div role="radiogroup" aria-label="Queries" className="segmented">
            {(["correct", "all"] as const).map((o) => (
              <button
                key={o}
                type="button"
                role="radio"
                aria-checked={columns === o}
                disabled={o === "correct" && !data.correct_queries}
                className={columns === o ? "active" : undefined}
                onClick={() => setOver(o)}
              >
                {o === "correct" ? `Correct queries (${data.correct_queries ?? 0})` : `All queries (${data.queries.length})`}
              </button>
            ))}
          </div>
        </div>
        {data.pending_methods.length ? (
          <p className="panel-body dim">Not scored yet: {data.pending_methods.join(", ")}</p>
        ) : null}
        <div className="panel-scroll">
          <LeaderboardTable board={data} over={columns} selected={key} onSelect={setSelected} />
        </div>
      </section>
      <QueryDrillDown board={data} row={row} />
    </div>
  );
}
