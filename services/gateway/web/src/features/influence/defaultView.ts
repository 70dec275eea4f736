/** Which matrix the influence explorer opens on when the URL names none: chosen from
 * evidence of which method predicts retraining best (LDS, see docs/validation.md).
 *
 * 1. The run's own latest completed validation: its best-LDS method and variant among the
 *    run's matrices (BM25 is a baseline, never the view).
 * 2. Otherwise the order measured on the benchmark workload by `python -m benchmarks.influence
 *    --lds` (benchmarks/results/influence-lds-cpu.json; the README says how it was chosen).
 * 3. Otherwise the run's first method, normalised where it has that variant. */

export interface MatrixId {
  method: string;
  variant: string;
}

export interface ValidatedMatrix extends MatrixId {
  lds: number | null;
}

/** Best LDS first on the benchmark workload (benchmarks/results/influence-lds-cpu.json). */
export const EVIDENCE_ORDER: MatrixId[] = [
  { method: "tracin", variant: "normalized" },
  { method: "tracin", variant: "raw" },
  { method: "ekfac", variant: "normalized" },
  { method: "ekfac", variant: "raw" },
  { method: "datainf", variant: "normalized" },
  { method: "datainf", variant: "raw" },
];

export function defaultView(
  present: MatrixId[],
  runOrder: string[],
  validated: ValidatedMatrix[] | null,
  evidence: MatrixId[] = EVIDENCE_ORDER,
): MatrixId | null {
  const has = (m: MatrixId) => present.some((p) => p.method === m.method && p.variant === m.variant);
  const best = (validated ?? [])
    .filter((v) => v.method !== "bm25" && v.lds != null && has(v))
    .sort((a, b) => (b.lds ?? 0) - (a.lds ?? 0))[0];
  if (best) return { method: best.method, variant: best.variant };
  const measured = evidence.find(has);
  if (measured) return measured;
  const method = runOrder.find((m) => present.some((p) => p.method === m)) ?? present[0]?.method;
  if (!method) return null;
  const variants = present.filter((p) => p.method === method).map((p) => p.variant);
  return { method, variant: variants.includes("normalized") ? "normalized" : variants[0]! };
}
