import { Check, ChevronUp, Copy, Download, Grid3x3, Maximize2, Minimize2, Play, Plus, RotateCcw } from "lucide-react";
import { lazy, Suspense, useCallback, useEffect, useMemo, useRef, useState } from "react";
import { Panel, PanelGroup, PanelResizeHandle, type ImperativePanelHandle } from "react-resizable-panels";
import { Link, useNavigate, useParams } from "react-router";
import { useQuery } from "@tanstack/react-query";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { ErrorState, InlineAlert, SkeletonRows } from "@/components/ui/Feedback";
import { useToast } from "@/components/ui/Toasts";
import { useMe } from "@/features/auth/api";
import { ConfigPanel } from "@/features/editor/ConfigPanel";
import { emptyDraft, draftFromExperiment, newKey, rowTokens, totalTokens, type Draft, type Row } from "@/features/editor/draft";
import { EstimatePanel, useEstimate } from "@/features/editor/EstimatePanel";
import { ImportButton, type ImportReport } from "@/features/editor/ImportButton";
import { RowsTable } from "@/features/editor/RowsTable";
import { useDraft, type SaveState } from "@/features/editor/useDraft";
import { useExperiment, useExperimentList, useExperimentMutations } from "@/features/experiments/api";
import { useRunList, useRunResults, useStartRun } from "@/features/runs/api";
import { RunsList } from "@/features/runs/RunsList";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { ApiError, describeError } from "@/lib/api/errors";
import { formatRelative, shortId } from "@/lib/format";
import { queryKeys } from "@/lib/queryKeys";
import { matchKind, type MatchKind } from "@/lib/textMatch";
import { NotFound } from "../NotFoundPage";
import { PageSkeleton } from "../PageSkeleton";
import "@/features/editor/editor.css";

const InfluenceExplorer = lazy(() => import("@/features/influence/InfluenceExplorer").then((m) => ({ default: m.InfluenceExplorer })));

function useLimits() {
  return useQuery({ queryKey: queryKeys.limits, queryFn: () => unwrap(api.GET("/api/limits")), staleTime: Number.POSITIVE_INFINITY });
}

function SaveStatus({ save }: { save: SaveState }) {
  const [, tick] = useState(0);
  // Re-render now and then so "saved 12 s ago" stays true.
  useEffect(() => {
    const timer = window.setInterval(() => tick((n) => n + 1), 15_000);
    return () => window.clearInterval(timer);
  }, []);
  switch (save.kind) {
    case "saved":
      return (
        <span className="save-status ok" role="status">
          <Check size={13} /> Saved · {formatRelative(new Date(save.at).toISOString())}
        </span>
      );
    case "saving":
      return (
        <span className="save-status" role="status">
          Saving…
        </span>
      );
    case "dirty":
      return (
        <span className="save-status" role="status">
          Unsaved changes
        </span>
      );
    case "local":
      return (
        <span className="save-status" role="status">
          Draft · kept in this browser until it is complete
        </span>
      );
    case "invalid":
      return (
        <span className="save-status warn" role="status">
          Not saved · {save.count} {save.count === 1 ? "problem" : "problems"} to fix
        </span>
      );
    case "error":
      return (
        <span className="save-status err" role="alert">
          Not saved · {save.message}
        </span>
      );
  }
}

const MATCH_CLASS: Record<MatchKind, string> = { exact: "m-ok", contains: "m-ok", partial: "m-part", miss: "m-miss" };

function Marker({ label, kind, title }: { label: string; kind: MatchKind | null; title: string }) {
  return (
    <span className={`match-marker ${kind ? MATCH_CLASS[kind] : "m-none"}`} title={`${title}: ${kind ?? "no reference"}`}>
      {label}
    </span>
  );
}

function exportJsonl(draft: Draft) {
  const lines = draft.training
    .filter((r) => r.question.trim())
    .map((r) => JSON.stringify({ ...(r.id ? { id: r.id } : {}), question: r.question, answer: r.answer }));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "application/x-ndjson" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = `${draft.name.replace(/[^\w.-]+/g, "_") || "training"}.jsonl`;
  a.click();
  URL.revokeObjectURL(url);
}

function ImportNotice({ report, onClose }: { report: ImportReport; onClose: () => void }) {
  return (
    <div className="import-report" role="status">
      <div className="row">
        <strong>{report.file}</strong>
        <span className="muted">
          {report.failed
            ? report.failed
            : `${report.imported} rows appended${report.errors.length ? ` · ${report.errors.length} rows skipped` : ""}`}
        </span>
        <span className="grow" />
        <button type="button" className="btn btn-sm btn-ghost" onClick={onClose}>
          Dismiss
        </button>
      </div>
      {report.errors.length ? (
        <ul>
          {report.errors.map((e, i) => (
            <li key={i} className="field-error">
              line {e.row}
              {e.field ? ` · ${e.field}` : ""}: {e.message}
            </li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

function Editor({
  experiment,
  userId,
  onCreated: created,
}: {
  experiment: Schemas["ExperimentOut"] | null;
  userId: string;
  onCreated?: (id: string) => void;
}) {
  const navigate = useNavigate();
  const toast = useToast();
  const limits = useLimits();
  const all = useExperimentList({ sort: "updated" });
  const { duplicate } = useExperimentMutations();
  const startRun = useStartRun();
  const defaultModel = "HuggingFaceTB/SmolLM2-135M-Instruct";
  const initial = useMemo(() => (experiment ? draftFromExperiment(experiment) : emptyDraft(defaultModel)), [experiment?.id]); // eslint-disable-line react-hooks/exhaustive-deps
  const onCreated = useCallback(
    (saved: Schemas["ExperimentOut"]) => {
      created?.(saved.id);
      navigate(`/experiments/${saved.id}`, { replace: true });
    },
    [navigate, created],
  );
  const { draft, setDraft, save, problems, flush, restored, discardLocal, experimentId } = useDraft({
    userId,
    experiment,
    initial,
    limits: limits.data,
    onCreated,
  });
  const estimate = useEstimate(draft);
  const runs = useRunList(experimentId ?? undefined);
  const lastCompleted = (runs.data ?? []).find((r) => r.status === "completed" || r.stages.inference === "completed");
  const lastResults = useRunResults(lastCompleted?.id, Boolean(lastCompleted));
  const [report, setReport] = useState<ImportReport | null>(null);
  const [startProblem, setStartProblem] = useState<string | null>(null);
  const bottom = useRef<ImperativePanelHandle>(null);
  const [bottomOpen, setBottomOpen] = useState(false);
  const [fullScreen, setFullScreen] = useState(false);
  usePageCrumbs([{ label: "Experiments", to: "/experiments" }, { label: draft.name || "New experiment" }]);

  const answers = useMemo(() => new Map((lastResults.data?.answers ?? []).map((a) => [a.eval_id, a])), [lastResults.data]);
  const markers = lastCompleted
    ? (row: Row) => {
        const a = row.id ? answers.get(row.id) : undefined;
        if (!a) return <span className="dim">–</span>;
        return (
          <span className="match-markers">
            <Marker label="B" title="Base" kind={matchKind(a.base, a.reference)} />
            <Marker label="F" title="Few-shot" kind={matchKind(a.few_shot, a.reference)} />
            <Marker label="T" title="Fine-tuned" kind={matchKind(a.fine_tuned, a.reference)} />
          </span>
        );
      }
    : undefined;

  const knownModels = useMemo(() => [...new Set((all.data ?? []).map((e) => e.model_id))], [all.data]);
  const fieldProblem = (field: string) => problems.find((p) => p.field === field)?.message;

  async function start() {
    setStartProblem(null);
    const saved = await flush();
    if (!saved) {
      setStartProblem("Fix the marked fields first: the experiment must be saved before it can run.");
      return;
    }
    const id = experimentId ?? undefined;
    if (!id) return;
    try {
      const queued = await startRun.mutateAsync(id);
      navigate(`/runs/${queued.run_id}`);
    } catch (e) {
      setStartProblem(describeError(e));
    }
  }

  const trainingTokens = draft.training.reduce((s, r) => s + rowTokens(r), 0);
  const trainingCount = draft.training.filter((r) => r.question.trim() || r.answer.trim()).length;
  const evalCount = draft.evaluation.filter((r) => r.question.trim()).length;

  const startButton = (
    <>
      {startProblem ? <InlineAlert>{startProblem}</InlineAlert> : null}
      <button type="button" className="btn btn-primary btn-lg btn-block" onClick={start} disabled={startRun.isPending}>
        <Play /> {startRun.isPending ? "Starting…" : "Start run"}
      </button>
    </>
  );

  const appendRows = (target: "training" | "evaluation") => (rows: Row[]) => {
    const current = draft[target].filter((r) => r.question.trim() || r.answer.trim());
    setDraft({ ...draft, [target]: [...current, ...rows] });
  };
  /** A list's header buttons: import rows from a file, add an empty row. */
  const listActions = (target: "training" | "evaluation", importLabel: string, addLabel: string) => (
    <>
      <ImportButton
        target={target === "training" ? "training_data" : "eval_data"}
        label={importLabel}
        onRows={appendRows(target)}
        onReport={setReport}
        maxBytes={limits.data?.max_request_bytes}
        existingIds={draft[target].flatMap((r) => (r.id ? [r.id] : []))}
      />
      <button
        type="button"
        className="btn btn-sm"
        onClick={() => setDraft({ ...draft, [target]: [...draft[target], { key: newKey(), id: null, question: "", answer: "" }] })}
      >
        <Plus /> {addLabel}
      </button>
    </>
  );
  const panelProblem = (field: string) =>
    fieldProblem(field) ? (
      <div className="panel-problem field-error" role="alert">
        {fieldProblem(field)}
      </div>
    ) : null;

  const editorBody = (
    <PanelGroup direction="horizontal" autoSaveId="inflab.editor.columns" className="editor-columns">
      <Panel defaultSize={44} minSize={25} className="editor-col">
        <section className="panel" aria-label="Evaluation questions">
          <div className="panel-header">
            <h2>Evaluation questions</h2>
            <span className="meta">
              <span className="num">{evalCount}</span> · held out, never trained on
            </span>
            <span className="spacer" />
            {listActions("evaluation", "Import", "Add evaluation question")}
          </div>
          {panelProblem("eval_data")}
          <RowsTable
            kind="evaluation"
            rows={draft.evaluation}
            onChange={(evaluation) => setDraft({ ...draft, evaluation })}
            problems={problems}
            markers={markers}
          />
          {lastCompleted ? (
            <div className="table-footer">
              <span className="match-marker m-ok">✓</span> exact <span className="match-marker m-part">~</span> partial{" "}
              <span className="match-marker m-miss">✗</span> miss
              <span className="dim">· B base · F few-shot · T fine-tuned, run {shortId(lastCompleted.id)}</span>
            </div>
          ) : null}
        </section>
        {experimentId ? <RunsList experimentId={experimentId} /> : null}
        <section className="panel" aria-label="Notes">
          <div className="panel-header">
            <h2>Notes</h2>
            <span className="meta">hypothesis, controls · autosaved with the experiment</span>
          </div>
          <textarea
            className="textarea notes"
            aria-label="Notes"
            rows={4}
            placeholder="What should the fine-tuned model learn, and which training pairs should drive which answers?"
            value={draft.description}
            onChange={(e) => setDraft({ ...draft, description: e.target.value })}
          />
        </section>
      </Panel>
      <PanelResizeHandle className="resize-handle vertical" aria-label="Resize columns" />
      <Panel defaultSize={56} minSize={30} className="editor-col">
        <section className="panel" aria-label="Training data">
          <div className="panel-header">
            <h2>Training data</h2>
            <span className="meta mono">
              {trainingCount} pairs · ~{trainingTokens.toLocaleString()} tokens
            </span>
            <span className="spacer" />
            {listActions("training", "Import training data", "Add training pair")}
          </div>
          {report ? <ImportNotice report={report} onClose={() => setReport(null)} /> : null}
          {panelProblem("training_data")}
          <div className="training-scroll">
            <RowsTable
              kind="training"
              rows={draft.training}
              onChange={(training) => setDraft({ ...draft, training })}
              problems={problems}
            />
          </div>
          <div className="table-footer">
            <span>~{totalTokens(draft).toLocaleString()} tokens with the evaluation questions</span>
            {limits.data ? (
              <span className="dim">
                · limits: {limits.data.max_training_pairs.toLocaleString()} pairs, {limits.data.max_text_chars.toLocaleString()} characters
                a text, {limits.data.max_total_tokens.toLocaleString()} tokens
              </span>
            ) : null}
          </div>
        </section>
        <div className="config-row">
          <section className="panel" aria-label="Configuration">
            <div className="panel-header">
              <h2>Configuration</h2>
            </div>
            <div className="panel-body">
              <ConfigPanel
                draft={draft}
                onChange={setDraft}
                problems={problems}
                defaultModel={defaultModel}
                knownModels={knownModels}
                tier={estimate.data?.tier ?? null}
              />
            </div>
          </section>
          <EstimatePanel draft={draft} startButton={startButton} />
        </div>
      </Panel>
    </PanelGroup>
  );

  return (
    <div className="editor-page">
      <div className="editor-header">
        <label htmlFor="experiment-name" className="muted">
          Experiment name
        </label>
        <input
          id="experiment-name"
          className="input name-input"
          value={draft.name}
          maxLength={200}
          onChange={(e) => setDraft({ ...draft, name: e.target.value })}
          aria-invalid={Boolean(fieldProblem("name"))}
        />
        <SaveStatus save={save} />
        {experimentId ? <span className="dim mono">{shortId(experimentId)}</span> : null}
        <span className="grow" />
        {restored ? (
          <button
            type="button"
            className="btn btn-sm btn-ghost"
            onClick={discardLocal}
            title="Unsaved changes from this browser were restored"
          >
            <RotateCcw /> Discard restored changes
          </button>
        ) : null}
        {experimentId ? (
          <button
            type="button"
            className="btn btn-sm"
            onClick={async () => {
              try {
                const copy = await duplicate.mutateAsync(experimentId);
                navigate(`/experiments/${copy.id}`);
              } catch (e) {
                toast.show(describeError(e), "error");
              }
            }}
          >
            <Copy /> Duplicate
          </button>
        ) : null}
        <button type="button" className="btn btn-sm" onClick={() => exportJsonl(draft)}>
          <Download /> Export JSONL
        </button>
      </div>
      {fullScreen && lastCompleted ? null : (
        <PanelGroup direction="vertical" className="editor-rows" autoSaveId="inflab.editor.rows">
          <Panel defaultSize={100} minSize={30} className="editor-main">
            {editorBody}
          </Panel>
          {lastCompleted ? (
            <>
              <PanelResizeHandle className="resize-handle horizontal" aria-label="Resize influence panel" />
              <Panel
                ref={bottom}
                defaultSize={0}
                collapsedSize={0}
                minSize={25}
                collapsible
                onCollapse={() => setBottomOpen(false)}
                onExpand={() => setBottomOpen(true)}
                className="editor-bottom"
              >
                {bottomOpen ? (
                  <Suspense fallback={<SkeletonRows rows={6} label="Loading influence" />}>
                    <InfluenceExplorer run={lastCompleted} />
                  </Suspense>
                ) : null}
              </Panel>
            </>
          ) : null}
        </PanelGroup>
      )}
      {lastCompleted ? (
        fullScreen ? (
          <div className="editor-fullscreen">
            <Suspense fallback={<SkeletonRows rows={6} label="Loading influence" />}>
              <InfluenceExplorer run={lastCompleted} />
            </Suspense>
          </div>
        ) : null
      ) : null}
      {lastCompleted ? (
        <div className="influence-bar">
          <Grid3x3 size={14} />
          <strong>Influence heatmap</strong>
          <span className="muted">
            · last completed run{" "}
            <Link to={`/runs/${lastCompleted.id}?tab=influence`} className="mono">
              {shortId(lastCompleted.id)}
            </Link>{" "}
            · {lastCompleted.config.eval_data.length} × {lastCompleted.config.training_data.length} ·{" "}
            {(lastCompleted.config.influence_methods ?? []).join(", ")}
          </span>
          <span className="grow" />
          <button
            type="button"
            className="btn btn-sm btn-ghost"
            aria-expanded={bottomOpen}
            onClick={() => {
              setFullScreen(false);
              if (bottomOpen) bottom.current?.collapse();
              else bottom.current?.resize(45);
            }}
          >
            {bottomOpen ? "Collapse" : "Expand"} <ChevronUp style={{ transform: bottomOpen ? "rotate(180deg)" : undefined }} />
          </button>
          <button type="button" className="btn btn-sm btn-ghost" onClick={() => setFullScreen((f) => !f)}>
            {fullScreen ? <Minimize2 /> : <Maximize2 />} {fullScreen ? "Exit full screen" : "Full screen"}
          </button>
        </div>
      ) : null}
    </div>
  );
}

/** Experiments created by this page's "new" editor: their first URL change keeps the same
 * editor (and what is being typed) instead of loading it afresh. */
const bornHere = new Set<string>();

/** The experiment editor: evaluation questions left; training data, configuration and
 * the estimate right; the last run's influence heatmap below. `/experiments/new` starts a
 * draft, which becomes `/experiments/{id}` on its first save. */
export function EditorPage() {
  const { experimentId } = useParams();
  const isNew = experimentId === "new";
  const me = useMe();
  const experiment = useExperiment(isNew ? undefined : experimentId);
  if (!me.data) return <PageSkeleton />;
  if (isNew) return <Editor key="new" experiment={null} userId={me.data.id} onCreated={(id) => bornHere.add(id)} />;
  if (experiment.isError) {
    if (experiment.error instanceof ApiError && experiment.error.status === 404) return <NotFound what="Experiment" />;
    return <ErrorState error={experiment.error} onRetry={() => void experiment.refetch()} />;
  }
  if (!experiment.data) return <PageSkeleton />;
  const key = bornHere.has(experiment.data.id) ? "new" : experiment.data.id;
  return <Editor key={key} experiment={experiment.data} userId={me.data.id} />;
}
