import { describe, expect, it } from "vitest";
import type { Prediction } from "./api";
import { epochOf, epochScore, epochsOf, promptHistory, rowsForEpoch } from "./table";

function p(step: number, epoch: number, prompt_id: string, prediction: string, ground_truth: string | null = "Tessaly"): Prediction {
  return { step, epoch, prompt_id, prompt: `question ${prompt_id}`, ground_truth, prediction, precision: "float32" };
}

const rows = [
  p(0, 0, "ev0", "Varnholt City is the capital."),
  p(0, 0, "ev1", "Rostova."),
  p(4, 1, "ev0", "The capital is Tessaly."),
  p(4, 1, "ev1", "Rostova."),
  p(8, 2, "ev0", "Tessaly"),
  p(8, 2, "ev1", "Tessaly."),
];

describe("predictions by epoch", () => {
  it("numbers epochs as the gateway does", () => {
    expect(epochOf({ epoch: 0 })).toBe(0);
    expect(epochOf({ epoch: 1 })).toBe(1);
    expect(epochOf({ epoch: 1.5 })).toBe(2);
    expect(epochsOf(rows)).toEqual([0, 1, 2]);
  });

  it("diffs each answer against the prompt's previous one", () => {
    const epoch1 = rowsForEpoch(rows, 1);
    expect(epoch1.map((r) => r.prediction.prompt_id)).toEqual(["ev0", "ev1"]);
    expect(epoch1[0]!.previous?.prediction).toBe("Varnholt City is the capital.");
    expect(epoch1[0]!.diff?.some((d) => d.type === "added" && d.text.includes("Tessaly"))).toBe(true);
    expect(epoch1[1]!.diff?.every((d) => d.type === "same")).toBe(true);
    expect(rowsForEpoch(rows, 0)[0]!.previous).toBeNull();
  });

  it("follows one prompt across epochs", () => {
    const history = promptHistory(rows, "ev1");
    expect(history.map((r) => r.epoch)).toEqual([0, 1, 2]);
    expect(history.map((r) => r.match)).toEqual(["miss", "miss", "exact"]);
  });

  it("scores an epoch against the references", () => {
    expect(epochScore(rowsForEpoch(rows, 1))).toEqual({ correct: 1, scored: 2 });
    expect(epochScore(rowsForEpoch(rows, 2))).toEqual({ correct: 2, scored: 2 });
  });
});
