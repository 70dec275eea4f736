import { X } from "lucide-react";
import { Fragment, type ReactNode } from "react";
import { formatSigned } from "@/lib/format";
import { matchKind } from "@/lib/textMatch";
import type { Texts } from "./exports";
import { ranksInRow, rowOf, topOfRow, type Frame, type Ranked } from "./matrix";
import { contentWords, highlightShared } from "./text";

export interface OtherRanking {
  label: string;
  frame: Frame;
}

interface DetailsPanelProps {
  frame: Frame;
  row: number;
  label: string;
  evalTexts: Map<string, Texts>;
  trainTexts: Map<string, Texts>;
  answers: Map<string, { base: string; few_shot: string; fine_tuned: string; reference: string | null }>;
  /** Other computed methods and the BM25 baseline: each pair's rank under them. */
  others: OtherRanking[];
  bm25: Frame | null;
  selectedCol: number | null;
  onPick: (col: number) => void;
  onClose?: () => void;
  k?: number;
  /** A benchmark run's ground truth: evaluation question id -> its relevant training ids. */
  relevant?: Record<string, string[]> | null;
}

function Highlighted({ text, against }: { text: string; against: Set<string> }) {
  return (
    <>
      {highlightShared(text, against).map((p, i) =>
        p.shared ? (
          <mark key={i} className="shared-word">
            {p.text}
          </mark>
        ) : (
          <Fragment key={i}>{p.text}</Fragment>
        ),
      )}
    </>
  );
}

function rankUnder(other: Frame, evalId: string, trainId: string): number | null {
  const r = other.rowIds.indexOf(evalId);
  const c = other.colIds.indexOf(trainId);
  if (r < 0 || c < 0) return null;
  return ranksInRow(rowOf(other, r))[c] ?? null;
}

function Item({
  item,
  max,
  props,
  against,
  evalId,
}: {
  item: Ranked;
  max: number;
  props: DetailsPanelProps;
  against: Set<string>;
  evalId: string;
}) {
  const t = props.trainTexts.get(item.id);
  const bm25 = props.bm25 ? rankUnder(props.bm25, evalId, item.id) : null;
  const isRelevant = props.relevant?.[evalId]?.includes(item.id) ?? false;
  return (
    <li className={`detail-item ${props.selectedCol === item.col ? "active" : ""} ${isRelevant ? "relevant" : ""}`}>
      <button type="button" className="detail-pick" onClick={() => props.onPick(item.col)} title="Select this cell">
        <span className="tid mono">T{item.col + 1}</span>
        {isRelevant ? <span className="badge badge-success relevant-badge">relevant</span> : null}
        <span className="detail-text">
          <span className="q">
            <Highlighted text={t?.question ?? item.id} against={against} />
          </span>
          {t?.answer ? (
            <span className="a mono">
              → <Highlighted text={t.answer} against={against} />
            </span>
          ) : null}
        </span>
        <span className="detail-score">
          <span className={`mono ${item.score >= 0 ? "pos" : "neg"}`}>{formatSigned(item.score, 3)}</span>
          <span className="scorebar">
            <span
              className={item.score >= 0 ? "pos" : "neg"}
              style={{ width: `${Math.min(Math.abs(item.score) / (max || 1), 1) * 100}%` }}
            />
          </span>
          <span className="ranks dim mono">
            #{item.rank}
            {props.others.map((o) => {
              const r = rankUnder(o.frame, evalId, item.id);
              return r != null ? ` · ${o.label} #${r}` : "";
            })}
            {bm25 != null ? ` · BM25 #${bm25}` : ""}
          </span>
        </span>
      </button>
    </li>
  );
}

/** One evaluation question: its answers, and the training pairs that pushed it most
 * (top positive, top negative), with their ranks under the other methods and BM25, and
 * the words they share with the question highlighted. */
/** One of the two lists of top training pairs; ``children`` says why it is empty. */
function Items({
  items,
  children,
  ...shared
}: {
  items: Ranked[];
  children: ReactNode;
  max: number;
  props: DetailsPanelProps;
  against: Set<string>;
  evalId: string;
}) {
  return items.length ? (
    <ol className="detail-items">
      {items.map((item) => (
        <Item key={item.col} item={item} {...shared} />
      ))}
    </ol>
  ) : (
    <p className="dim empty">{children}</p>
  );
}

export function DetailsPanel(props: DetailsPanelProps) {
  const { frame, row, evalTexts, answers, k = 6 } = props;
  const evalId = frame.rowIds[row]!;
  const e = evalTexts.get(evalId);
  const answer = answers.get(evalId);
  const against = contentWords(`${e?.question ?? ""} ${e?.answer ?? ""}`);
  const top = topOfRow(frame, row, k);
  const max = Math.max(...top.positive.map((x) => Math.abs(x.score)), ...top.negative.map((x) => Math.abs(x.score)), 0);
  const fineTunedMatch = answer ? matchKind(answer.fine_tuned, answer.reference) : null;
  const relevantCount = props.relevant?.[evalId]?.length ?? null;

  return (
    <section className="panel details-panel" aria-label="Influence details">
      <div className="panel-header">
        <h2>Influence details</h2>
        <span className="spacer" />
        <span className="badge badge-mono">{props.label}</span>
        {props.onClose ? (
          <button type="button" className="icon-btn icon-btn-sm" aria-label="Close details" onClick={props.onClose}>
            <X />
          </button>
        ) : null}
      </div>
      <div className="panel-body details-question">
        <div className="dim" style={{ fontSize: "var(--text-xs)" }}>
          <span className="badge badge-mono">E{row + 1}</span> row {row + 1} of {frame.rows} · ↑↓ to move
        </div>
        <h3>{e?.question ?? evalId}</h3>
        <dl className="details-list">
          {e?.answer ? (
            <>
              <dt>Reference</dt>
              <dd>{e.answer}</dd>
            </>
          ) : null}
          {answer ? (
            <>
              <dt>Fine-tuned</dt>
              <dd>
                {answer.fine_tuned}{" "}
                {fineTunedMatch ? (
                  <span
                    className={`badge ${fineTunedMatch === "miss" ? "badge-error" : fineTunedMatch === "partial" ? "badge-warning" : "badge-success"}`}
                  >
                    {fineTunedMatch}
                  </span>
                ) : null}
              </dd>
              <dt>Base</dt>
              <dd className="muted">{answer.base}</dd>
            </>
          ) : null}
        </dl>
      </div>
      <div className="details-lists">
        <h4>
          <span className="dot pos" /> Top positive <span className="dim num">{top.positive.length}</span>
          <span className="grow" />
          <span className="dim col-head">score · ranks</span>
        </h4>
        <Items items={top.positive} max={max} props={props} against={against} evalId={evalId}>
          No training pair lowered this question's loss.
        </Items>
        <h4>
          <span className="dot neg" /> Top negative <span className="dim num">{top.negative.length}</span>
        </h4>
        <Items items={top.negative} max={max} props={props} against={against} evalId={evalId}>
          No training pair raised this question's loss.
        </Items>
      </div>
      <p className="details-note dim">
        Positive: the pair lowered the loss of the reference answer; negative: it raised it.{" "}
        <mark className="shared-word">Highlighted</mark>: words shared with the question and its reference. BM25: lexical rank, a baseline.
        {relevantCount != null ? ` Benchmark: ${relevantCount} relevant training documents by construction, marked "relevant".` : null}
      </p>
    </section>
  );
}
