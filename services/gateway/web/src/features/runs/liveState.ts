/** A run's live state: a pure reducer over the run snapshot (GET /api/runs/{id}) and its
 * event stream (GET /api/runs/{id}/events, SSE). The server owns the state; this only
 * folds what it sent, so a reload, a dropped connection or a second tab rebuild exactly
 * the same view. Every event carries its stream id: one seen before changes nothing. */
import type { Schemas } from "@/lib/api/client";
import { TERMINAL, type RunStatus } from "@/lib/runStatus";

export type RunSnapshot = Schemas["RunOut"];
export type RunEvent =
  | Schemas["StatusEvent"]
  | Schemas["ProgressEvent"]
  | Schemas["MetricEvent"]
  | Schemas["CheckpointEvent"]
  | Schemas["LogEvent"]
  | Schemas["ResultEvent"]
  | Schemas["PredictionEvent"]
  | Schemas["ParamsEvent"];
export type EventKind = RunEvent["kind"];
export const EVENT_KINDS: readonly EventKind[] = ["status", "progress", "metric", "checkpoint", "log", "result", "prediction", "params"];

/** Share of the run's progress each stage fills (the gateway's weights). */
const STAGE_WEIGHTS = { train: 0.6, inference: 0.2, influence: 0.2 } as const;

export interface StageState {
  key: string;
  status: RunStatus;
  fraction: number;
  step: number;
  total: number;
  epoch: number | null;
  etaS: number | null;
  message: string | null;
  error: string | null;
  startedAt: string | null;
  endedAt: string | null;
}

/** Training metrics as columns (what uPlot draws), one entry per optimizer step. */
export interface MetricSeries {
  step: number[];
  epoch: number[];
  loss: number[];
  learningRate: number[];
  gradNorm: (number | null)[];
  tokensPerS: (number | null)[];
  memoryMb: (number | null)[];
}

export interface CheckpointMark {
  step: number;
  epoch: number;
  key: string;
  loss: number | null;
}

export interface ParamChange {
  effectiveStep: number;
  requestId: string | null;
  changes: Record<string, { old: number; new: number }>;
  time: string;
}

export interface PredictionPoint {
  step: number;
  epoch: number;
  count: number;
}

export interface LogLine {
  id: number;
  time: string;
  tone: "info" | "warning" | "error" | "success" | "change";
  text: string;
}

export interface LiveRun {
  runId: string;
  lastEventId: number;
  status: RunStatus;
  error: string | null;
  stages: Record<string, StageState>;
  metrics: MetricSeries;
  checkpoints: CheckpointMark[];
  paramChanges: ParamChange[];
  predictionPoints: PredictionPoint[];
  /** The newest event lines, newest last (bounded: the stream itself is the full record). */
  log: LogLine[];
  /** Which results have arrived: "train", "inference", "influence.tracin:raw"... */
  results: string[];
  /** The latest training progress, for the header. */
  loss: number | null;
  currentEpoch: number | null;
  /** Bumped on every prediction event, so the predictions table knows to re-read. */
  predictionVersion: number;
}

export const LOG_LIMIT = 400;

function emptyMetrics(): MetricSeries {
  return { step: [], epoch: [], loss: [], learningRate: [], gradNorm: [], tokensPerS: [], memoryMb: [] };
}

export function stageKey(stage: string, method: string | null | undefined): string {
  return stage === "influence" && method ? `influence.${method}` : stage;
}

function newStage(key: string, status: RunStatus): StageState {
  return {
    key,
    status,
    fraction: status === "completed" ? 1 : 0,
    step: 0,
    total: 0,
    epoch: null,
    etaS: null,
    message: null,
    error: null,
    startedAt: null,
    endedAt: null,
  };
}

/** The state before any event: what the snapshot says. */
export function fromSnapshot(run: RunSnapshot): LiveRun {
  const stages: Record<string, StageState> = {};
  for (const [key, status] of Object.entries(run.stages)) stages[key] = newStage(key, status);
  const train = stages.train;
  if (train && run.current_epoch != null) train.epoch = run.current_epoch;
  if (train && run.eta_s != null && !TERMINAL.has(train.status)) train.etaS = run.eta_s;
  return {
    runId: run.id,
    lastEventId: 0,
    status: run.status,
    error: run.error,
    stages,
    metrics: emptyMetrics(),
    checkpoints: [],
    paramChanges: [],
    predictionPoints: [],
    log: [],
    results: [],
    loss: run.loss,
    currentEpoch: run.current_epoch,
    predictionVersion: 0,
  };
}

/** A finished stage stays finished: a stale "running" (redelivered, out of order) must not reopen it. */
function nextStatus(current: RunStatus | undefined, reported: RunStatus): RunStatus {
  if (current && TERMINAL.has(current) && !TERMINAL.has(reported)) return current;
  return reported;
}

/** Index of `step` in the sorted step column, or where it would go (binary search). */
function stepIndex(steps: number[], step: number): { index: number; found: boolean } {
  let lo = 0;
  let hi = steps.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (steps[mid]! < step) lo = mid + 1;
    else hi = mid;
  }
  return { index: lo, found: steps[lo] === step };
}

/** Put one step's values into the (draft's own) columns. Appending is the common case;
 * a resumed trainer re-sends steps, and the newest value wins. */
function putMetric(series: MetricSeries, e: Schemas["MetricEvent"]): void {
  const values: [keyof MetricSeries, number | null][] = [
    ["step", e.step],
    ["epoch", e.epoch],
    ["loss", e.loss],
    ["learningRate", e.learning_rate],
    ["gradNorm", e.grad_norm ?? null],
    ["tokensPerS", e.tokens_per_s ?? null],
    ["memoryMb", e.memory_mb ?? null],
  ];
  const last = series.step[series.step.length - 1];
  const { index, found } =
    last === undefined || e.step > last ? { index: series.step.length, found: false } : stepIndex(series.step, e.step);
  for (const [name, value] of values) {
    const column = series[name] as (number | null)[];
    if (found) column[index] = value;
    else if (index === column.length) column.push(value);
    else column.splice(index, 0, value);
  }
}

function describe(e: RunEvent): LogLine["tone"] | null {
  switch (e.kind) {
    case "status":
      return e.status === "failed" ? "error" : e.status === "completed" ? "success" : e.status === "cancelled" ? "warning" : "info";
    case "log":
      return e.level === "error" ? "error" : e.level === "warning" ? "warning" : e.level === "debug" ? null : "info";
    case "params":
      return "change";
    case "checkpoint":
    case "prediction":
    case "result":
      return "success";
    case "metric":
    case "progress":
      return null; // drawn in the charts and bars, not worth a line each
  }
}

function stageLabel(e: RunEvent): string {
  return e.stage === "influence" && e.method ? `influence ${e.method}` : e.stage;
}

export function logText(e: RunEvent): string {
  switch (e.kind) {
    case "status":
      return `${stageLabel(e)} ${e.status}${e.error ? ` · ${e.error}` : ""}`;
    case "log":
      return `${stageLabel(e)}: ${e.message}`;
    case "params":
      return Object.entries(e.changes)
        .map(([name, change]) => `${name} ${change.old} → ${change.new} applied at step ${e.effective_step}`)
        .join(" · ");
    case "checkpoint":
      return `checkpoint e${e.checkpoint.epoch} saved · step ${e.checkpoint.step}`;
    case "prediction":
      return `predictions at step ${e.step} (epoch ${Math.round(e.epoch * 100) / 100}) · ${e.samples.length} prompts`;
    case "result":
      if (e.training) return `training finished · ${e.training.steps} steps · ${e.training.tokens} tokens`;
      if (e.answers) return `answers ready · ${e.answers.length} questions`;
      if (e.influence) return `influence ${e.influence.method} (${e.influence.variant}) ready · ${e.influence.shape?.join(" × ") ?? ""}`;
      return `${stageLabel(e)} result`;
    case "metric":
      return `step ${e.step} · loss ${e.loss.toFixed(3)}`;
    case "progress":
      return `${stageLabel(e)} ${Math.round(e.fraction * 100)}%`;
  }
}

function resultKeys(e: Schemas["ResultEvent"]): string[] {
  const keys: string[] = [];
  if (e.training) keys.push("train");
  if (e.answers) keys.push("inference");
  if (e.influence) keys.push(`influence.${e.influence.method}:${e.influence.variant}`);
  return keys;
}

/** A copy of the state whose collections may be changed in place while a batch of
 * events is applied (copying the metric columns once per batch, not once per event,
 * keeps a replay of tens of thousands of steps linear). */
function draftOf(state: LiveRun): LiveRun {
  return {
    ...state,
    stages: { ...state.stages },
    metrics: {
      step: [...state.metrics.step],
      epoch: [...state.metrics.epoch],
      loss: [...state.metrics.loss],
      learningRate: [...state.metrics.learningRate],
      gradNorm: [...state.metrics.gradNorm],
      tokensPerS: [...state.metrics.tokensPerS],
      memoryMb: [...state.metrics.memoryMb],
    },
    checkpoints: [...state.checkpoints],
    paramChanges: [...state.paramChanges],
    predictionPoints: [...state.predictionPoints],
    log: [...state.log],
    results: [...state.results],
  };
}

function applyInto(next: LiveRun, id: number, e: RunEvent): void {
  next.lastEventId = id;
  const key = stageKey(e.stage, e.method);
  // A validation follows an ended run (its own panel shows it): no stage of the run.
  const stage = e.stage === "run" || e.stage === "validation" ? undefined : (next.stages[key] ?? newStage(key, "queued"));

  switch (e.kind) {
    case "status": {
      if (e.stage === "run") {
        next.status = e.status;
        if (e.error) next.error = e.error;
        if (TERMINAL.has(e.status) && e.status !== "completed") {
          // Stages that never started never will.
          for (const [k, s] of Object.entries(next.stages)) if (s.status === "queued") next.stages[k] = { ...s, status: "cancelled" };
        }
      } else if (stage) {
        const status = nextStatus(stage.status, e.status);
        const updated: StageState = { ...stage, status };
        if ((status === "running" || status === "checkpointing") && !updated.startedAt) updated.startedAt = e.time ?? null;
        if (TERMINAL.has(status)) {
          updated.endedAt = updated.endedAt ?? e.time ?? null;
          updated.etaS = null;
          if (status === "completed") updated.fraction = 1;
        }
        if (e.error) updated.error = e.error;
        next.stages[key] = updated;
        if (next.status === "queued" && (status === "running" || status === "checkpointing")) next.status = "running";
      }
      break;
    }
    case "progress":
      if (stage) {
        next.stages[key] = {
          ...stage,
          fraction: stage.status === "completed" ? 1 : e.fraction,
          step: e.step ?? stage.step,
          total: e.total ?? stage.total,
          epoch: e.epoch ?? stage.epoch,
          etaS: TERMINAL.has(stage.status) ? null : (e.eta_s ?? null),
          message: e.message ?? stage.message,
        };
        if (e.stage === "train" && e.epoch != null) next.currentEpoch = e.epoch;
      }
      break;
    case "metric":
      putMetric(next.metrics, e);
      next.loss = e.loss;
      next.currentEpoch = e.epoch;
      break;
    case "checkpoint": {
      const mark = { step: e.checkpoint.step, epoch: e.checkpoint.epoch, key: e.checkpoint.key, loss: e.checkpoint.loss ?? null };
      next.checkpoints = [...next.checkpoints.filter((c) => c.step !== mark.step), mark].sort((a, b) => a.step - b.step);
      break;
    }
    case "params":
      next.paramChanges.push({
        effectiveStep: e.effective_step,
        requestId: e.request_id ?? null,
        changes: e.changes as ParamChange["changes"],
        time: e.time ?? "",
      });
      break;
    case "prediction": {
      const point = { step: e.step, epoch: e.epoch, count: e.samples.length };
      next.predictionPoints = [...next.predictionPoints.filter((p) => p.step !== e.step), point].sort((a, b) => a.step - b.step);
      next.predictionVersion += 1;
      break;
    }
    case "result":
      for (const k of resultKeys(e)) if (!next.results.includes(k)) next.results.push(k);
      break;
    case "log":
      break;
  }

  const tone = describe(e);
  if (tone) next.log.push({ id, time: e.time ?? "", tone, text: logText(e) });
}

/** Fold events (each with its stream id) into the state; ids seen before change nothing. */
export function applyEvents(state: LiveRun, events: readonly { id: number; event: RunEvent }[]): LiveRun {
  const fresh = events.filter(({ id }) => id > state.lastEventId);
  if (fresh.length === 0) return state;
  const next = draftOf(state);
  for (const { id, event } of fresh) if (id > next.lastEventId) applyInto(next, id, event);
  if (next.log.length > LOG_LIMIT) next.log = next.log.slice(next.log.length - LOG_LIMIT);
  return next;
}

export function applyEvent(state: LiveRun, id: number, event: RunEvent): LiveRun {
  return applyEvents(state, [{ id, event }]);
}

/** Overall progress in [0, 1], weighted as the gateway weighs it. */
export function overallProgress(stages: Record<string, StageState>): number {
  const entries = Object.values(stages);
  const influence = entries.filter((s) => s.key.startsWith("influence"));
  let total = 0;
  let done = 0;
  for (const s of entries) {
    const weight = s.key.startsWith("influence")
      ? STAGE_WEIGHTS.influence / influence.length
      : (STAGE_WEIGHTS[s.key as keyof typeof STAGE_WEIGHTS] ?? 0);
    const fraction = s.status === "completed" ? 1 : Math.min(Math.max(s.fraction, 0), 1);
    total += weight;
    done += weight * fraction;
  }
  return total ? done / total : 0;
}

/** The three stage groups the timeline shows, in pipeline order. */
export function stageGroups(stages: Record<string, StageState>): { train?: StageState; inference?: StageState; influence: StageState[] } {
  return {
    train: stages.train,
    inference: stages.inference,
    influence: Object.values(stages)
      .filter((s) => s.key.startsWith("influence."))
      .sort((a, b) => a.key.localeCompare(b.key)),
  };
}
