import { Tabs } from "radix-ui";
import { lazy, Suspense } from "react";
import { Link, useParams, useSearchParams } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { ErrorState, InlineAlert, SkeletonRows } from "@/components/ui/Feedback";
import { useExperiment } from "@/features/experiments/api";
import { PredictionsPanel } from "@/features/predictions/PredictionsPanel";
import { useRun } from "@/features/runs/api";
import { EventLog } from "@/features/runs/EventLog";
import { RunDetails } from "@/features/runs/RunDetails";
import { RunHeader } from "@/features/runs/RunHeader";
import { RunProgress } from "@/features/runs/RunProgress";
import { StageTimeline } from "@/features/runs/StageTimeline";
import { TrainingCharts } from "@/features/runs/TrainingCharts";
import { useLiveRun } from "@/features/runs/useLiveRun";
import { ApiError } from "@/lib/api/errors";
import { shortId } from "@/lib/format";
import { NotFound } from "../NotFoundPage";
import { PageSkeleton } from "../PageSkeleton";
import "@/features/runs/run.css";

// The results views are the heaviest code: loaded when their tab is first opened.
const AnswersPanel = lazy(() => import("@/features/answers/AnswersPanel").then((m) => ({ default: m.AnswersPanel })));
const InfluenceExplorer = lazy(() => import("@/features/influence/InfluenceExplorer").then((m) => ({ default: m.InfluenceExplorer })));

const TABS = ["overview", "predictions", "answers", "influence"] as const;
type Tab = (typeof TABS)[number];

/** A run, live: rebuilt from its snapshot and event stream, so a reload shows the same. */
export function RunPage() {
  const { runId } = useParams();
  const [params, setParams] = useSearchParams();
  const run = useRun(runId);
  const experiment = useExperiment(run.data?.experiment_id ?? undefined);
  const { live, stream } = useLiveRun(run.data);
  const experimentName = experiment.data?.name ?? null;
  usePageCrumbs([
    { label: "Experiments", to: "/experiments" },
    ...(run.data?.experiment_id && experimentName ? [{ label: experimentName, to: `/experiments/${run.data.experiment_id}` }] : []),
    { label: runId ? shortId(runId) : "Run", mono: true },
  ]);

  if (run.isError) {
    if (run.error instanceof ApiError && run.error.status === 404) return <NotFound what="Run" />;
    return <ErrorState error={run.error} onRetry={() => void run.refetch()} />;
  }
  if (!run.data || !live) return <PageSkeleton />;

  const config = run.data.config;
  const methods = config.influence_methods ?? [];
  const tab: Tab = TABS.includes(params.get("tab") as Tab) ? (params.get("tab") as Tab) : "overview";
  const answersReady = live.stages.inference?.status === "completed" || live.results.includes("inference");
  const influenceDone = Object.values(live.stages).filter((s) => s.key.startsWith("influence.") && s.status === "completed").length;
  const influenceReady = influenceDone > 0 || live.results.some((r) => r.startsWith("influence."));
  const totalSteps = live.stages.train?.total || null;
  const failedStages = Object.values(live.stages).filter((s) => s.status === "failed");

  return (
    <div>
      <RunHeader run={run.data} live={live} experimentName={experimentName} />
      <Tabs.Root
        value={tab}
        onValueChange={(value) =>
          setParams(
            (p) => {
              const next = new URLSearchParams(p);
              if (value === "overview") next.delete("tab");
              else next.set("tab", value);
              return next;
            },
            { replace: false },
          )
        }
      >
        <Tabs.List className="tabs-list" aria-label="Run views">
          <Tabs.Trigger className="tab" value="overview">
            Overview
          </Tabs.Trigger>
          <Tabs.Trigger className="tab" value="predictions">
            Predictions <span className="count">{live.predictionPoints.length}</span>
          </Tabs.Trigger>
          <Tabs.Trigger className="tab" value="answers" disabled={!answersReady}>
            Answers <span className="count">{config.eval_data.length} × 3</span>
          </Tabs.Trigger>
          <Tabs.Trigger className="tab" value="influence" disabled={!influenceReady}>
            Influence{" "}
            <span className="count">
              {methods.length} {methods.length === 1 ? "method" : "methods"}
            </span>
          </Tabs.Trigger>
          {run.data.config.benchmark ? (
            <Link className="tab" to={`/benchmarks/${run.data.id}`}>
              Leaderboard
            </Link>
          ) : null}
        </Tabs.List>

        <Tabs.Content value="overview" className="run-body">
          {live.status === "failed" || failedStages.length > 0 ? (
            <InlineAlert>
              {failedStages.length > 0
                ? failedStages.map((s) => (
                    <div key={s.key}>
                      <strong>{s.key.replace("influence.", "influence ")} failed</strong>
                      {s.error ? `: ${s.error}` : ""}
                    </div>
                  ))
                : live.error}
              {live.status !== "failed" ? <div className="muted">The other stages go on; the run ends when all have.</div> : null}
            </InlineAlert>
          ) : null}
          <section className="panel" aria-label="Stages">
            <StageTimeline
              live={live}
              epochs={config.hyperparams?.num_epochs ?? 1}
              questions={config.eval_data.length}
              fewShotK={config.few_shot_k ?? 0}
            />
            <RunProgress live={live} runId={run.data.id} />
          </section>
          <TrainingCharts live={live} totalSteps={totalSteps} />
          <div className="overview-lower">
            <PredictionsPanel runId={run.data.id} version={live.predictionVersion} compact />
            <div className="col" style={{ gap: 12 }}>
              <RunDetails run={run.data} live={live} />
              <EventLog live={live} stream={stream} />
            </div>
          </div>
        </Tabs.Content>
        <Tabs.Content value="predictions" className="run-body">
          <PredictionsPanel runId={run.data.id} version={live.predictionVersion} />
        </Tabs.Content>
        <Tabs.Content value="answers" className="run-body">
          <Suspense fallback={<SkeletonRows rows={8} label="Loading answers" />}>
            {answersReady ? (
              <AnswersPanel
                run={run.data}
                onOpenInfluence={
                  influenceReady
                    ? (evalId) =>
                        setParams((p) => {
                          const next = new URLSearchParams(p);
                          next.set("tab", "influence");
                          next.set("eval", evalId);
                          next.delete("train");
                          return next;
                        })
                    : undefined
                }
              />
            ) : null}
          </Suspense>
        </Tabs.Content>
        <Tabs.Content value="influence" className="run-body">
          <Suspense fallback={<SkeletonRows rows={8} label="Loading influence" />}>
            {influenceReady ? <InfluenceExplorer run={run.data} /> : null}
          </Suspense>
        </Tabs.Content>
      </Tabs.Root>
    </div>
  );
}
