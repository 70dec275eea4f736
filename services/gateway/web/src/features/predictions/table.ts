/** The predictions table's data logic: rows grouped by epoch, each answer beside the same
 * prompt's previous one, as plain functions the tests call directly. */
import { matchKind, type MatchKind } from "@/lib/textMatch";
import { wordDiff, type DiffPart } from "@/lib/wordDiff";
import type { Prediction } from "./api";

/** The 1-based epoch a sample was taken in (the gateway's rule: the ceiling of the
 * reported fractional epoch; 0 before the first step). */
export function epochOf(p: Pick<Prediction, "epoch">): number {
  return Math.ceil(p.epoch);
}

export function epochsOf(rows: Prediction[]): number[] {
  return [...new Set(rows.map(epochOf))].sort((a, b) => a - b);
}

export interface PredictionRow {
  prediction: Prediction;
  epoch: number;
  /** The same prompt's answer at the sampling point before this one, if any. */
  previous: Prediction | null;
  diff: DiffPart[] | null;
  match: MatchKind | null;
}

function byPrompt(rows: Prediction[]): Map<string, Prediction[]> {
  const map = new Map<string, Prediction[]>();
  for (const row of [...rows].sort((a, b) => a.step - b.step)) {
    const list = map.get(row.prompt_id) ?? [];
    list.push(row);
    map.set(row.prompt_id, list);
  }
  return map;
}

function toRow(p: Prediction, previous: Prediction | null): PredictionRow {
  return {
    prediction: p,
    epoch: epochOf(p),
    previous,
    diff: previous ? wordDiff(previous.prediction, p.prediction) : null,
    match: matchKind(p.prediction, p.ground_truth),
  };
}

/** The rows of one epoch (every sampling point in it), each diffed against the prompt's
 * previous answer. */
export function rowsForEpoch(rows: Prediction[], epoch: number): PredictionRow[] {
  const result: PredictionRow[] = [];
  for (const history of byPrompt(rows).values()) {
    history.forEach((p, i) => {
      if (epochOf(p) === epoch) result.push(toRow(p, history[i - 1] ?? null));
    });
  }
  return result.sort((a, b) => a.prediction.step - b.prediction.step || a.prediction.prompt_id.localeCompare(b.prediction.prompt_id));
}

/** One prompt through training: every sampling point, oldest first. */
export function promptHistory(rows: Prediction[], promptId: string): PredictionRow[] {
  const history = byPrompt(rows).get(promptId) ?? [];
  return history.map((p, i) => toRow(p, history[i - 1] ?? null));
}

/** How many of an epoch's answers match their reference (exact or containing it). */
export function epochScore(rows: PredictionRow[]): { correct: number; scored: number } {
  const scored = rows.filter((r) => r.match != null);
  return { correct: scored.filter((r) => r.match === "exact" || r.match === "contains").length, scored: scored.length };
}
