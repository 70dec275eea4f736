import { ChevronRight, History, X } from "lucide-react";
import { Fragment, useEffect, useMemo, useState } from "react";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import type { MatchKind } from "@/lib/textMatch";
import type { DiffPart } from "@/lib/wordDiff";
import { usePredictions, type Prediction } from "./api";
import { epochScore, epochsOf, promptHistory, rowsForEpoch, type PredictionRow } from "./table";
import "./predictions.css";

const MATCH_TONE: Record<MatchKind, string> = {
  exact: "badge-success",
  contains: "badge-success",
  partial: "badge-warning",
  miss: "badge-error",
};

export function MatchBadge({ match }: { match: MatchKind | null }) {
  if (!match) return <span className="dim">–</span>;
  return <span className={`badge match-badge ${MATCH_TONE[match]}`}>{match}</span>;
}

export function DiffText({ parts, fallback, clamped = false }: { parts: DiffPart[] | null; fallback: string; clamped?: boolean }) {
  return (
    <div className={`answer-text ${clamped ? "clamped" : ""}`}>
      {parts
        ? parts.map((part, i) =>
            part.type === "same" ? (
              <Fragment key={i}>{part.text}</Fragment>
            ) : part.type === "added" ? (
              <ins key={i} className="diff-add" style={{ textDecoration: "none" }}>
                {part.text}
              </ins>
            ) : (
              <del key={i} className="diff-del">
                {part.text}
              </del>
            ),
          )
        : fallback}
    </div>
  );
}

function epochLabel(epoch: number, rows: Prediction[]): string {
  const steps = [...new Set(rows.filter((r) => Math.ceil(r.epoch) === epoch).map((r) => r.step))];
  const where = steps.length === 1 ? `step ${steps[0]}` : `${steps.length} points`;
  return epoch === 0 ? `0 · before training` : `${epoch} · ${where}`;
}

function PromptHistory({ rows, promptId, onClose }: { rows: Prediction[]; promptId: string; onClose: () => void }) {
  const history = promptHistory(rows, promptId);
  const first = history[0]?.prediction;
  if (!first) return null;
  return (
    <section className="panel" aria-label="Prompt across epochs">
      <div className="panel-header">
        <History size={14} />
        <h2 className="truncate">{first.prompt}</h2>
        <span className="spacer" />
        {first.ground_truth ? (
          <span className="muted">
            reference{" "}
            <span className="mono" style={{ color: "var(--text)" }}>
              {first.ground_truth}
            </span>
          </span>
        ) : null}
        <button type="button" className="icon-btn icon-btn-sm" aria-label="Close prompt history" onClick={onClose}>
          <X />
        </button>
      </div>
      <div className="history-list">
        {history.map((row) => (
          <div key={row.prediction.step} className="history-item">
            <span className="when">
              epoch {row.epoch}
              <br />
              step {row.prediction.step}
            </span>
            <DiffText parts={row.diff} fallback={row.prediction.prediction} />
            <MatchBadge match={row.match} />
          </div>
        ))}
      </div>
    </section>
  );
}

function Row({
  row,
  index,
  expanded,
  onToggle,
  onFollow,
}: {
  row: PredictionRow;
  index: number;
  expanded: boolean;
  onToggle: () => void;
  onFollow: () => void;
}) {
  const p = row.prediction;
  return (
    <tr>
      <td className="idx">
        <button
          type="button"
          className="row-toggle"
          aria-expanded={expanded}
          aria-label={`${expanded ? "Collapse" : "Expand"} row ${index + 1}`}
          onClick={onToggle}
        >
          <ChevronRight />
        </button>
      </td>
      <td className="prompt">
        <div className={expanded ? "" : "truncate"} style={{ maxWidth: expanded ? undefined : 420 }} title={p.prompt}>
          {p.prompt}
        </div>
      </td>
      <td className="ref">{p.ground_truth ?? <span className="dim">–</span>}</td>
      <td>
        <DiffText parts={row.diff} fallback={p.prediction} clamped={!expanded} />
      </td>
      <td className="right" style={{ whiteSpace: "nowrap" }}>
        <MatchBadge match={row.match} />
        <button
          type="button"
          className="icon-btn icon-btn-sm"
          aria-label={`Follow prompt ${index + 1} across epochs`}
          title="Follow across epochs"
          onClick={onFollow}
        >
          <History />
        </button>
      </td>
    </tr>
  );
}

/** Sampled answers during training, by epoch, each diffed against the previous sampling
 * point — and one prompt followed across every epoch. */
export function PredictionsPanel({ runId, version, compact = false }: { runId: string; version: number; compact?: boolean }) {
  const query = usePredictions(runId, version);
  const rows = useMemo(() => query.data ?? [], [query.data]);
  const epochs = useMemo(() => epochsOf(rows), [rows]);
  const [epoch, setEpoch] = useState<number | null>(null);
  const [expanded, setExpanded] = useState<Set<string>>(new Set());
  const [follow, setFollow] = useState<string | null>(null);
  const latest = epochs[epochs.length - 1] ?? null;
  const shown = epoch ?? latest;
  // Follow the newest epoch as training goes on, unless the researcher picked one.
  useEffect(() => {
    if (epoch != null && !epochs.includes(epoch)) setEpoch(null);
  }, [epoch, epochs]);
  const table = useMemo(() => (shown == null ? [] : rowsForEpoch(rows, shown)), [rows, shown]);
  const score = epochScore(table);
  const promptCount = new Set(rows.map((r) => r.prompt_id)).size;

  return (
    <div className="col" style={{ gap: 12 }}>
      <section className="panel" aria-label="Predictions during training">
        <div className="panel-header">
          <h2>Predictions</h2>
          <span className="meta">{promptCount} sampled questions · answered greedily at each sampling point</span>
          <span className="spacer" />
          {score.scored ? (
            <span className="badge badge-mono">
              {score.correct} / {score.scored} correct
            </span>
          ) : null}
          <label htmlFor={`epoch-${runId}`} className="muted">
            Epoch
          </label>
          <select
            id={`epoch-${runId}`}
            className="select"
            style={{ width: 170 }}
            value={shown ?? ""}
            disabled={epochs.length === 0}
            onChange={(e) => setEpoch(Number(e.target.value))}
          >
            {epochs.map((value) => (
              <option key={value} value={value}>
                {epochLabel(value, rows)}
              </option>
            ))}
          </select>
          <span className="diff-del legend-chip">removed</span>
          <span className="diff-add legend-chip">added</span>
        </div>
        {query.isPending ? (
          <SkeletonRows rows={4} label="Loading predictions" />
        ) : query.isError ? (
          <ErrorState error={query.error} onRetry={() => void query.refetch()} />
        ) : rows.length === 0 ? (
          <EmptyState title="No predictions yet">
            <p>The sampled questions are answered at the first sampling point (each epoch by default).</p>
          </EmptyState>
        ) : (
          <div className="panel-scroll" style={compact ? { maxHeight: 360 } : undefined}>
            <table className="table predictions-table" aria-label="Predictions">
              <thead>
                <tr>
                  <th className="idx" aria-label="Row" />
                  <th>Prompt</th>
                  <th>Reference</th>
                  <th>
                    Answer at epoch {shown} <span style={{ textTransform: "none", letterSpacing: 0 }}>· diff vs previous point</span>
                  </th>
                  <th className="right">Match</th>
                </tr>
              </thead>
              <tbody>
                {table.map((row, i) => {
                  const key = `${row.prediction.step}:${row.prediction.prompt_id}`;
                  return (
                    <Row
                      key={key}
                      row={row}
                      index={i}
                      expanded={expanded.has(key)}
                      onToggle={() =>
                        setExpanded((all) => {
                          const next = new Set(all);
                          if (next.has(key)) next.delete(key);
                          else next.add(key);
                          return next;
                        })
                      }
                      onFollow={() => setFollow(row.prediction.prompt_id)}
                    />
                  );
                })}
              </tbody>
            </table>
          </div>
        )}
      </section>
      {follow ? <PromptHistory rows={rows} promptId={follow} onClose={() => setFollow(null)} /> : null}
    </div>
  );
}
