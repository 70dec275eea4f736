import { describe, expect, it } from "vitest";
import { applyEvent, applyEvents, fromSnapshot, LOG_LIMIT, overallProgress, type RunEvent, type RunSnapshot } from "./liveState";

const RUN = "00000000-0000-0000-0000-000000000001";

function snapshot(overrides: Partial<RunSnapshot> = {}): RunSnapshot {
  return {
    id: RUN,
    experiment_id: null,
    status: "queued",
    progress: 0,
    current_epoch: null,
    loss: null,
    eta_s: null,
    stages: { train: "queued", inference: "queued", "influence.tracin": "queued", "influence.datainf": "queued" },
    error: null,
    config: {} as RunSnapshot["config"],
    created_at: "2026-12-01T10:00:00Z",
    started_at: null,
    finished_at: null,
    estimate: null,
    actual_duration_s: null,
    actual_training_duration_s: null,
    actual_cost_usd: null,
    ...overrides,
  } as RunSnapshot;
}

const base = {
  run_id: RUN,
  schema_version: 1 as const,
  time: "2026-12-01T10:00:01Z",
  method: null,
  event_id: "00000000-0000-0000-0000-0000000000ee",
};

function status(
  stage: "run" | "train" | "inference" | "influence" | "validation",
  value: RunSnapshot["status"],
  method: string | null = null,
  error: string | null = null,
): RunEvent {
  return { ...base, kind: "status", stage, status: value, method, error };
}

function metric(step: number, loss: number, lr = 1e-3): RunEvent {
  return {
    ...base,
    kind: "metric",
    stage: "train",
    step,
    epoch: step / 10,
    loss,
    learning_rate: lr,
    grad_norm: 1,
    tokens_per_s: 100,
    samples_per_s: null,
    memory_mb: null,
    gpu_memory_mb: null,
  };
}

describe("run state from snapshot and events", () => {
  it("starts from the snapshot's stages", () => {
    const state = fromSnapshot(snapshot({ status: "running", stages: { train: "running", inference: "queued" }, current_epoch: 1.5 }));
    expect(state.status).toBe("running");
    expect(state.stages.train?.status).toBe("running");
    expect(state.stages.train?.epoch).toBe(1.5);
    expect(state.lastEventId).toBe(0);
  });

  it("applies status, progress and metrics, and ignores an id seen before", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvent(state, 1, status("train", "running"));
    state = applyEvent(state, 2, {
      ...base,
      kind: "progress",
      stage: "train",
      fraction: 0.5,
      step: 5,
      total: 10,
      epoch: 0.5,
      eta_s: 12,
      message: null,
    });
    state = applyEvent(state, 3, metric(1, 2.5));
    const again = applyEvent(state, 3, metric(1, 9.9));
    expect(again).toBe(state);
    expect(state.status).toBe("running");
    expect(state.stages.train).toMatchObject({ status: "running", fraction: 0.5, step: 5, total: 10, etaS: 12 });
    expect(state.metrics.loss).toEqual([2.5]);
    expect(state.loss).toBe(2.5);
  });

  it("keeps metric columns sorted by step; a re-sent step replaces its values", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvents(state, [
      { id: 1, event: metric(1, 3) },
      { id: 2, event: metric(2, 2.5) },
      { id: 3, event: metric(4, 2) },
      { id: 4, event: metric(3, 2.2) }, // a resumed trainer catching up
      { id: 5, event: metric(2, 2.4) }, // the same step again: newest wins
    ]);
    expect(state.metrics.step).toEqual([1, 2, 3, 4]);
    expect(state.metrics.loss).toEqual([3, 2.4, 2.2, 2]);
    expect(state.metrics.learningRate).toHaveLength(4);
  });

  it("never reopens a finished stage", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvent(state, 1, status("train", "completed"));
    state = applyEvent(state, 2, status("train", "running"));
    expect(state.stages.train?.status).toBe("completed");
    expect(state.stages.train?.fraction).toBe(1);
  });

  it("shows a failed influence stage at once while the run goes on", () => {
    let state = fromSnapshot(snapshot({ status: "running" }));
    state = applyEvent(state, 1, status("influence", "failed", "datainf", "out of memory"));
    expect(state.stages["influence.datainf"]).toMatchObject({ status: "failed", error: "out of memory" });
    expect(state.status).toBe("running");
    state = applyEvent(state, 2, status("influence", "completed", "tracin"));
    state = applyEvent(state, 3, status("run", "failed", null, "influence datainf failed: out of memory"));
    expect(state.status).toBe("failed");
    expect(state.error).toContain("datainf");
    expect(state.stages["influence.tracin"]?.status).toBe("completed");
  });

  it("marks stages that never started as cancelled when the run ends early", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvent(state, 1, status("train", "cancelled"));
    state = applyEvent(state, 2, status("run", "cancelled"));
    expect(state.stages.inference?.status).toBe("cancelled");
    expect(state.stages["influence.tracin"]?.status).toBe("cancelled");
  });

  it("records checkpoints, parameter changes and prediction points as chart markers", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvents(state, [
      {
        id: 1,
        event: {
          ...base,
          kind: "checkpoint",
          stage: "train",
          checkpoint: { step: 16, epoch: 1, key: `runs/${RUN}/checkpoints/16`, learning_rate: 1e-3, loss: 0.9 },
        },
      },
      {
        id: 2,
        event: {
          ...base,
          kind: "params",
          stage: "train",
          request_id: "r1",
          changes: { learning_rate: { old: 0.001, new: 0.0005 } },
          effective_step: 18,
        },
      },
      {
        id: 3,
        event: {
          ...base,
          kind: "prediction",
          stage: "train",
          step: 16,
          epoch: 1,
          samples: [{ prompt_id: "ev00", prompt: "q", ground_truth: "a", prediction: "a" }],
          precision: "float32",
        },
      },
    ]);
    expect(state.checkpoints).toEqual([{ step: 16, epoch: 1, key: `runs/${RUN}/checkpoints/16`, loss: 0.9 }]);
    expect(state.paramChanges[0]).toMatchObject({ effectiveStep: 18, requestId: "r1" });
    expect(state.predictionPoints).toEqual([{ step: 16, epoch: 1, count: 1 }]);
    expect(state.predictionVersion).toBe(1);
    expect(state.log.map((l) => l.text)).toContain("learning_rate 0.001 → 0.0005 applied at step 18");
  });

  it("replays the same events into the same state however they are batched", () => {
    const events: { id: number; event: RunEvent }[] = [
      { id: 1, event: status("train", "running") },
      ...Array.from({ length: 50 }, (_, i) => ({ id: i + 2, event: metric(i + 1, 3 - i * 0.01) })),
      { id: 60, event: status("train", "completed") },
    ];
    const all = applyEvents(fromSnapshot(snapshot()), events);
    let oneByOne = fromSnapshot(snapshot());
    for (const { id, event } of events) oneByOne = applyEvent(oneByOne, id, event);
    const halves = applyEvents(applyEvents(fromSnapshot(snapshot()), events.slice(0, 20)), events.slice(10));
    expect(oneByOne).toEqual(all);
    expect(halves).toEqual(all);
  });

  it("keeps the whole metric history but bounds the event log", () => {
    const events = Array.from({ length: LOG_LIMIT + 100 }, (_, i) => ({ id: i + 1, event: status("train", "running") }));
    const metrics = Array.from({ length: 20_000 }, (_, i) => ({ id: LOG_LIMIT + 200 + i, event: metric(i + 1, 1) }));
    const state = applyEvents(applyEvents(fromSnapshot(snapshot()), events), metrics);
    expect(state.log).toHaveLength(LOG_LIMIT);
    expect(state.metrics.step).toHaveLength(20_000);
  });

  it("weights overall progress as the gateway does", () => {
    let state = fromSnapshot(snapshot());
    state = applyEvent(state, 1, status("train", "completed"));
    expect(overallProgress(state.stages)).toBeCloseTo(0.6);
    state = applyEvent(state, 2, status("influence", "completed", "tracin"));
    expect(overallProgress(state.stages)).toBeCloseTo(0.7);
  });
});

describe("a validation of the ended run", () => {
  it("is logged but adds no stage and moves no progress", () => {
    const done = fromSnapshot(snapshot({ status: "completed", progress: 1, stages: { train: "completed", inference: "completed" } }));
    const after = applyEvents(done, [
      { id: 50, event: status("validation", "running") },
      {
        id: 51,
        event: {
          ...base,
          kind: "progress",
          stage: "validation",
          fraction: 0.5,
          step: 1,
          total: 2,
          epoch: null,
          eta_s: null,
          message: "retraining full done",
        } as RunEvent,
      },
    ]);
    expect(Object.keys(after.stages).sort()).toEqual(["inference", "train"]);
    expect(after.status).toBe("completed");
    expect(overallProgress(after.stages)).toBe(overallProgress(done.stages));
  });
});
