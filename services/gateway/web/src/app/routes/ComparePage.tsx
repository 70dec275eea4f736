import { useMemo } from "react";
import { Link, useSearchParams } from "react-router";
import { LineChart } from "@/components/charts/LineChart";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { isRight, scoreOf, type Answer } from "@/features/answers/answers";
import { alignCurves, configRows } from "@/features/compare/compare";
import { agreement, frameOf } from "@/features/influence/matrix";
import { useRun, useRunResults, type Run, type RunResults } from "@/features/runs/api";
import { ApiError } from "@/lib/api/errors";
import { formatNumber, shortId } from "@/lib/format";
import { methodLabel } from "@/lib/methods";
import { NotFound } from "../NotFoundPage";
import "@/features/compare/compare.css";

function RunTitle({ run, tag }: { run: Run; tag: string }) {
  return (
    <div className="compare-title">
      <span className={`compare-tag ${tag.toLowerCase()}`}>{tag}</span>
      <Link to={`/runs/${run.id}`} className="mono">
        run {shortId(run.id)}
      </Link>
      <StatusBadge status={run.status} />
      <span className="dim">{new Date(run.created_at).toLocaleString("en-GB", { hour12: false })}</span>
    </div>
  );
}

function AnswerCell({ answer }: { answer: Answer | undefined }) {
  if (!answer) return <td className="dim">–</td>;
  const score = scoreOf(answer, "fine_tuned");
  return (
    <td className="mono" style={{ fontSize: "var(--text-sm)" }}>
      {answer.fine_tuned}
      {score ? (
        <div className="dim" style={{ fontSize: "var(--text-xs)" }}>
          <span className={`badge ${isRight(score) ? "badge-success" : "badge-error"}`}>{isRight(score) ? "right" : "wrong"}</span>
          {score.logprob != null ? ` log p(ref) ${formatNumber(score.logprob, 3)}` : ""}
        </div>
      ) : null}
    </td>
  );
}

function InfluenceAgreement({ a, b }: { a: RunResults; b: RunResults }) {
  const pairs = useMemo(() => {
    const list: { method: string; variant: string; mean: number; perRow: number[]; rowIds: string[] }[] = [];
    for (const ma of a.influence) {
      const mb = b.influence.find((m) => m.method === ma.method && m.variant === ma.variant);
      if (!mb) continue;
      const fa = frameOf(ma.scores, ma.eval_ids, ma.train_ids);
      const fb = frameOf(mb.scores, mb.eval_ids, mb.train_ids);
      const result = agreement(fa, fb);
      if (result) list.push({ method: ma.method, variant: ma.variant, mean: result.mean, perRow: result.perRow, rowIds: fa.rowIds });
    }
    return list;
  }, [a, b]);
  if (pairs.length === 0) {
    return (
      <p className="panel-body dim">
        The runs share no influence matrix over the same evaluation questions and training pairs, so their rankings cannot be compared.
      </p>
    );
  }
  return (
    <table className="table table-dense" aria-label="Influence agreement">
      <thead>
        <tr>
          <th>Method</th>
          <th>Variant</th>
          <th className="right">Mean ρ</th>
          <th>Per evaluation question</th>
        </tr>
      </thead>
      <tbody>
        {pairs.map((p) => (
          <tr key={`${p.method}:${p.variant}`}>
            <td>{methodLabel(p.method)}</td>
            <td>{p.variant}</td>
            <td className="right num">{Number.isFinite(p.mean) ? p.mean.toFixed(2) : "–"}</td>
            <td>
              <div className="rho-strip">
                {p.perRow.map((rho, i) => (
                  <span
                    key={p.rowIds[i]}
                    title={`${p.rowIds[i]}: ρ ${Number.isFinite(rho) ? rho.toFixed(2) : "–"}`}
                    style={{
                      background: Number.isFinite(rho) ? `rgba(59,130,246,${0.15 + 0.85 * Math.max(rho, 0)})` : "var(--neutral-soft)",
                    }}
                  />
                ))}
              </div>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** Two runs side by side: configuration differences, loss curves, answers and how far
 * their influence rankings agree. */
export function ComparePage() {
  const [params] = useSearchParams();
  const aId = params.get("a") ?? undefined;
  const bId = params.get("b") ?? undefined;
  const a = useRun(aId);
  const b = useRun(bId);
  const ra = useRunResults(aId);
  const rb = useRunResults(bId);
  usePageCrumbs([{ label: "Compare runs" }, ...(aId && bId ? [{ label: `${shortId(aId)} vs ${shortId(bId)}`, mono: true }] : [])]);

  const rows = useMemo(() => (a.data && b.data ? configRows(a.data.config, b.data.config) : []), [a.data, b.data]);
  const curves = useMemo(
    () => (ra.data && rb.data ? alignCurves(ra.data.training.loss_curve, rb.data.training.loss_curve) : null),
    [ra.data, rb.data],
  );

  if (!aId || !bId) {
    return (
      <div className="page">
        <EmptyState title="Pick two runs">
          <p>Tick two runs in an experiment's run list and press Compare.</p>
        </EmptyState>
      </div>
    );
  }
  for (const q of [a, b]) {
    if (q.isError)
      return q.error instanceof ApiError && q.error.status === 404 ? (
        <NotFound what="Run" />
      ) : (
        <ErrorState error={q.error} onRetry={() => void q.refetch()} />
      );
  }
  if (!a.data || !b.data) return <SkeletonRows rows={8} label="Loading runs" />;

  const evalIds = a.data.config.eval_data.map((e) => e.id).filter((id) => b.data!.config.eval_data.some((e) => e.id === id));
  const answersA = new Map((ra.data?.answers ?? []).map((x) => [x.eval_id, x]));
  const answersB = new Map((rb.data?.answers ?? []).map((x) => [x.eval_id, x]));
  const differing = rows.filter((r) => r.differs).length;

  return (
    <div className="page compare-page">
      <div className="page-header">
        <h1>Compare runs</h1>
        <span className="grow" />
      </div>
      <div className="grid-2">
        <div className="panel stat-card">
          <RunTitle run={a.data} tag="A" />
          <div className="sub">final loss {formatNumber(a.data.loss, 3)}</div>
        </div>
        <div className="panel stat-card">
          <RunTitle run={b.data} tag="B" />
          <div className="sub">final loss {formatNumber(b.data.loss, 3)}</div>
        </div>
      </div>
      <div className="grid-2">
        <figure className="panel chart-card" aria-label="Loss curves">
          <figcaption>
            <span className="title">Loss</span>
            <span className="sub">A blue · B amber, per optimizer step</span>
          </figcaption>
          {curves && curves.x.length ? (
            <LineChart
              x={curves.x}
              height={220}
              series={[
                { label: "A", values: curves.a, color: "var(--accent)" },
                { label: "B", values: curves.b, color: "var(--warning)" },
              ]}
            />
          ) : (
            <div className="chart-empty" style={{ height: 220 }}>
              {ra.isPending || rb.isPending ? "loading…" : "no training metrics"}
            </div>
          )}
        </figure>
        <section className="panel" aria-label="Configuration differences">
          <div className="panel-header">
            <h2>Configuration</h2>
            <span className="meta">
              {differing} of {rows.length} settings differ
            </span>
          </div>
          <div className="panel-scroll" style={{ maxHeight: 260 }}>
            <table className="table table-dense">
              <thead>
                <tr>
                  <th>Setting</th>
                  <th>A</th>
                  <th>B</th>
                </tr>
              </thead>
              <tbody>
                {[...rows]
                  .sort((x, y) => Number(y.differs) - Number(x.differs))
                  .map((r) => (
                    <tr key={r.key} className={r.differs ? "differs" : ""}>
                      <td className="mono">{r.key}</td>
                      <td className="mono">{r.a}</td>
                      <td className="mono">{r.b}</td>
                    </tr>
                  ))}
              </tbody>
            </table>
          </div>
        </section>
      </div>
      <section className="panel" aria-label="Answers side by side">
        <div className="panel-header">
          <h2>Fine-tuned answers</h2>
          <span className="meta">{evalIds.length} evaluation questions in both runs</span>
        </div>
        <div className="panel-scroll" style={{ maxHeight: 420 }}>
          <table className="table">
            <thead>
              <tr>
                <th>Question</th>
                <th>Reference</th>
                <th>A · fine-tuned</th>
                <th>B · fine-tuned</th>
              </tr>
            </thead>
            <tbody>
              {evalIds.map((id) => {
                const x = answersA.get(id);
                const y = answersB.get(id);
                return (
                  <tr key={id}>
                    <td>{a.data!.config.eval_data.find((e) => e.id === id)?.question}</td>
                    <td className="mono">{x?.reference ?? y?.reference ?? "–"}</td>
                    <AnswerCell answer={x} />
                    <AnswerCell answer={y} />
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      </section>
      <section className="panel" aria-label="Influence agreement between the runs">
        <div className="panel-header">
          <h2>Influence agreement</h2>
          <span className="meta">Spearman ρ between the runs' rankings, per evaluation question</span>
        </div>
        {ra.data && rb.data ? <InfluenceAgreement a={ra.data} b={rb.data} /> : <SkeletonRows rows={2} label="Loading results" />}
      </section>
    </div>
  );
}
