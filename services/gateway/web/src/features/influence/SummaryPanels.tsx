import { useMemo } from "react";
import { formatNumber, formatSigned } from "@/lib/format";
import type { Texts } from "./exports";
import { agreement, aligned, overallTop, rowOf, topOverlap, type Frame } from "./matrix";

interface SummaryProps {
  frame: Frame;
  label: string;
  others: { label: string; frame: Frame }[];
  bm25: Frame | null;
  row: number | null;
  trainTexts: Map<string, Texts>;
  onPick: (col: number) => void;
}

const K = 5;

/** Beside the heatmap: how far the methods agree, how much the top of a row overlaps with
 * the other methods and with word overlap (BM25), and the pairs that matter most overall. */
export function SummaryPanels({ frame, label, others, bm25, row, trainTexts, onPick }: SummaryProps) {
  const all = useMemo(() => [{ label, frame }, ...others, ...(bm25 ? [{ label: "BM25", frame: bm25 }] : [])], [label, frame, others, bm25]);
  const rho = useMemo(() => all.map((a) => all.map((b) => (a === b ? 1 : (agreement(a.frame, b.frame)?.mean ?? Number.NaN)))), [all]);
  const top = useMemo(() => overallTop(frame, K), [frame]);
  const maxTotal = Math.max(...top.positive.map((x) => Math.abs(x.score)), ...top.negative.map((x) => Math.abs(x.score)), 0);
  const overlaps = useMemo(() => {
    if (row == null) return [];
    const mine = rowOf(frame, row);
    return all.slice(1).map((o) => {
      const theirs = aligned(frame, o.frame);
      return { label: o.label, shared: theirs ? topOverlap(mine, rowOf(theirs, row), K) : null };
    });
  }, [all, frame, row]);
  const rowStats = useMemo(() => {
    if (row == null) return null;
    let pos = 0;
    let neg = 0;
    rowOf(frame, row).forEach((v) => {
      if (v > 0) pos += v;
      else if (v < 0) neg += v;
    });
    return { pos, neg };
  }, [frame, row]);

  return (
    <div className="summary-grid">
      <section className="panel" aria-label="Method agreement">
        <div className="panel-header">
          <h2>Method agreement</h2>
          <span className="meta">Spearman ρ per question, averaged</span>
        </div>
        {all.length < 2 ? (
          <p className="panel-body dim">One method computed; BM25 and the other methods appear here when the run has them.</p>
        ) : (
          <table className="table table-dense agreement">
            <thead>
              <tr>
                <th />
                {all.map((a) => (
                  <th key={a.label} className="right">
                    {a.label}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {all.map((a, i) => (
                <tr key={a.label}>
                  <th scope="row">{a.label}</th>
                  {all.map((b, j) => (
                    <td
                      key={b.label}
                      className={`right num ${i === j ? "dim" : ""}`}
                      style={i === j ? undefined : { background: `rgba(59,130,246,${Math.max(0, rho[i]![j]!) * 0.25})` }}
                    >
                      {i === j ? "1" : Number.isFinite(rho[i]![j]!) ? rho[i]![j]!.toFixed(2) : "–"}
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <section className="panel" aria-label="Top-5 overlap">
        <div className="panel-header">
          <h2>Top-{K} overlap</h2>
          <span className="meta">{row != null ? `row E${row + 1}` : "select a row"}</span>
        </div>
        <div className="panel-body col" style={{ gap: 8 }}>
          {overlaps.length === 0 ? <span className="dim">No other ranking to compare with.</span> : null}
          {overlaps.map((o) => (
            <div key={o.label} className="overlap-row">
              <span>
                {label} ∩ {o.label}
              </span>
              <span className="overlap-bar">
                <span style={{ width: `${((o.shared ?? 0) / K) * 100}%` }} className={o.label === "BM25" ? "muted-bar" : ""} />
              </span>
              <span className="mono">{o.shared == null ? "–" : `${o.shared}/${K}`}</span>
            </div>
          ))}
          {rowStats ? (
            <div className="row-stats">
              <div>
                <div className="dim">Σ positive</div>
                <div className="mono pos">{formatSigned(rowStats.pos, 3)}</div>
              </div>
              <div>
                <div className="dim">Σ negative</div>
                <div className="mono neg">{formatSigned(rowStats.neg, 3)}</div>
              </div>
            </div>
          ) : null}
        </div>
      </section>
      <section className="panel" aria-label="Most influential training pairs">
        <div className="panel-header">
          <h2>Most influential overall</h2>
          <span className="meta">summed over every evaluation question</span>
        </div>
        <div className="panel-body overall">
          {[
            { title: "Positive", items: top.positive, tone: "pos" },
            { title: "Negative", items: top.negative, tone: "neg" },
          ].map((group) => (
            <div key={group.title}>
              <h4>{group.title}</h4>
              {group.items.length === 0 ? <span className="dim">none</span> : null}
              {group.items.map((x) => (
                <button
                  key={x.col}
                  type="button"
                  className="overall-item"
                  onClick={() => onPick(x.col)}
                  title={trainTexts.get(x.id)?.answer ?? undefined}
                >
                  <span className="mono dim">T{x.col + 1}</span>
                  <span className="truncate grow">{trainTexts.get(x.id)?.question ?? x.id}</span>
                  <span className="overall-bar">
                    <span className={group.tone} style={{ width: `${(Math.abs(x.score) / (maxTotal || 1)) * 100}%` }} />
                  </span>
                  <span className={`mono ${group.tone}`}>{formatNumber(x.score, 2)}</span>
                </button>
              ))}
            </div>
          ))}
        </div>
      </section>
    </div>
  );
}
