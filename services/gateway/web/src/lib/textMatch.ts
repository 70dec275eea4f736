/** How close an answer is to a reference, on normalised text (SQuAD's rule: lower case,
 * no punctuation, no articles a/an/the, single spaces) — the same rule the inference
 * stage scores answers with, so the predictions table and the answers table agree. */

export function normalizeAnswer(text: string): string {
  return text
    .toLowerCase()
    .replace(/[\p{P}\p{S}]/gu, " ")
    .replace(/\b(a|an|the)\b/g, " ")
    .replace(/\s+/g, " ")
    .trim();
}

export function tokenF1(prediction: string, reference: string): number {
  const p = normalizeAnswer(prediction).split(" ").filter(Boolean);
  const r = normalizeAnswer(reference).split(" ").filter(Boolean);
  if (p.length === 0 || r.length === 0) return p.length === r.length ? 1 : 0;
  const counts = new Map<string, number>();
  for (const t of r) counts.set(t, (counts.get(t) ?? 0) + 1);
  let common = 0;
  for (const t of p) {
    const left = counts.get(t) ?? 0;
    if (left > 0) {
      common += 1;
      counts.set(t, left - 1);
    }
  }
  if (common === 0) return 0;
  const precision = common / p.length;
  const recall = common / r.length;
  return (2 * precision * recall) / (precision + recall);
}

export function exactMatch(prediction: string, reference: string): boolean {
  return normalizeAnswer(prediction) === normalizeAnswer(reference);
}

export function containsReference(prediction: string, reference: string): boolean {
  const r = normalizeAnswer(reference);
  return r.length > 0 && ` ${normalizeAnswer(prediction)} `.includes(` ${r} `);
}

export type MatchKind = "exact" | "contains" | "partial" | "miss";

/** exact: the same text; contains: the reference appears whole inside the answer;
 * partial: some words shared (token F1 > 0); miss: none. */
export function matchKind(prediction: string, reference: string | null | undefined): MatchKind | null {
  if (!reference) return null;
  if (exactMatch(prediction, reference)) return "exact";
  if (containsReference(prediction, reference)) return "contains";
  return tokenF1(prediction, reference) > 0 ? "partial" : "miss";
}
