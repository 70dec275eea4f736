import type { ReactNode } from "react";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { formatDuration, formatNumber } from "@/lib/format";
import type { RunStatus } from "@/lib/runStatus";
import { stageGroups, type LiveRun, type StageState } from "./liveState";

const METHOD_LABEL: Record<string, string> = { tracin: "TracIn", datainf: "DataInf", ekfac: "EK-FAC" };

export function methodLabel(method: string): string {
  return METHOD_LABEL[method] ?? method;
}

function tone(status: RunStatus): "accent" | "success" | "error" | "warning" {
  if (status === "completed") return "success";
  if (status === "failed") return "error";
  if (status === "cancelled") return "warning";
  return "accent";
}

function badgeSuffix(stage: StageState): string | undefined {
  if (stage.status === "running" || stage.status === "checkpointing") return `${Math.round(stage.fraction * 100)}%`;
  return undefined;
}

/** One stage's cell: its name and status, a progress bar, its facts and the time left,
 * and its error. */
function StageCell({
  name,
  heading = name,
  stage,
  children,
}: {
  /** For screen readers: "<name> stage", "<name> progress". */
  name: string;
  heading?: string;
  stage: StageState;
  children: ReactNode;
}) {
  return (
    <div className="stage-cell" aria-label={`${name} stage`}>
      <div className="head">
        <h3>{heading}</h3>
        <StatusBadge status={stage.status} suffix={badgeSuffix(stage)} />
      </div>
      <ProgressBar value={stage.fraction} label={`${name} progress`} tone={tone(stage.status)} />
      <div className="facts">
        {children}
        {stage.etaS != null && stage.status !== "completed" ? (
          <span style={{ marginLeft: "auto" }}>
            ETA <b>{formatDuration(stage.etaS)}</b>
          </span>
        ) : null}
      </div>
      {stage.error ? <div className="error-text">{stage.error}</div> : null}
    </div>
  );
}

function TrainCell({ stage, live, epochs }: { stage: StageState | undefined; live: LiveRun; epochs: number }) {
  if (!stage) return null;
  const epoch = live.currentEpoch ?? stage.epoch;
  return (
    <StageCell name="Training" heading="Train" stage={stage}>
      <span>
        epoch <b>{epoch != null ? `${Math.min(Math.ceil(epoch || 0.0001), epochs)} / ${epochs}` : `– / ${epochs}`}</b>
      </span>
      <span>
        step <b>{stage.total ? `${stage.step} / ${stage.total}` : stage.step || "–"}</b>
      </span>
      <span>
        loss <b>{formatNumber(live.loss, 3)}</b>
      </span>
    </StageCell>
  );
}

function InferenceCell({ stage, questions, fewShotK }: { stage: StageState | undefined; questions: number; fewShotK: number }) {
  if (!stage) return null;
  return (
    <StageCell name="Inference" stage={stage}>
      <span>
        <b>{questions}</b> questions × base · few-shot (k={fewShotK}) · fine-tuned
      </span>
    </StageCell>
  );
}

/** One status for several parallel stages: running while any is, failed once all have
 * ended and one failed. */
export function combinedStatus(statuses: RunStatus[]): RunStatus {
  if (statuses.some((s) => s === "running" || s === "checkpointing")) return "running";
  if (statuses.some((s) => s === "queued")) return statuses.every((s) => s === "queued") ? "queued" : "running";
  if (statuses.every((s) => s === "completed")) return "completed";
  if (statuses.some((s) => s === "failed")) return "failed";
  return "cancelled";
}

function InfluenceCell({ stages }: { stages: StageState[] }) {
  if (stages.length === 0) return null;
  const overall = combinedStatus(stages.map((s) => s.status));
  return (
    <div className="stage-cell" aria-label="Influence stage">
      <div className="head">
        <h3>Influence</h3>
        <StatusBadge status={overall} />
      </div>
      {stages.map((s) => {
        const method = s.key.slice("influence.".length);
        return (
          <div key={s.key} className="method-status">
            <span className="name">{methodLabel(method)}</span>
            <ProgressBar value={s.fraction} label={`${methodLabel(method)} progress`} tone={tone(s.status)} />
            <span
              className={`badge ${s.status === "failed" ? "badge-error" : s.status === "completed" ? "badge-success" : ""}`}
              title={s.error ?? undefined}
            >
              {s.status}
            </span>
          </div>
        );
      })}
      {stages
        .filter((s) => s.error)
        .map((s) => (
          <div key={`${s.key}-error`} className="error-text">
            {methodLabel(s.key.slice("influence.".length))}: {s.error}
          </div>
        ))}
    </div>
  );
}

/** Train, then inference and influence in parallel: where the run is, stage by stage. */
export function StageTimeline({
  live,
  epochs,
  questions,
  fewShotK,
}: {
  live: LiveRun;
  epochs: number;
  questions: number;
  fewShotK: number;
}) {
  const groups = stageGroups(live.stages);
  return (
    <div className="stage-timeline">
      <TrainCell stage={groups.train} live={live} epochs={epochs} />
      <InferenceCell stage={groups.inference} questions={questions} fewShotK={fewShotK} />
      <InfluenceCell stages={groups.influence} />
    </div>
  );
}
