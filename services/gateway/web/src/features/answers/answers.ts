/** The answers table's data logic: per question the three models' answers and scores,
 * the filters a researcher asks for, sorting and the column aggregates. */
import type { Schemas } from "@/lib/api/client";
import { containsReference, exactMatch, tokenF1 } from "@/lib/textMatch";

export type Answer = Schemas["Answer"];
export type Model = "base" | "few_shot" | "fine_tuned";
export const MODELS: Model[] = ["base", "few_shot", "fine_tuned"];
export const MODEL_LABEL: Record<Model, string> = { base: "Base", few_shot: "Few-shot", fine_tuned: "Fine-tuned" };

export interface Score {
  exact: boolean;
  contains: boolean;
  f1: number;
  logprob: number | null;
}

/** The stored scores of one answer; computed from the text (without log-probability) for
 * answers stored before the inference stage scored them. */
export function scoreOf(answer: Answer, model: Model): Score | null {
  const stored = answer.scores?.[model];
  if (stored)
    return { exact: stored.exact_match, contains: stored.contains_reference, f1: stored.token_f1, logprob: stored.ref_logprob ?? null };
  if (!answer.reference) return null;
  const text = answer[model];
  return {
    exact: exactMatch(text, answer.reference),
    contains: containsReference(text, answer.reference),
    f1: tokenF1(text, answer.reference),
    logprob: null,
  };
}

/** Right means the answer states the reference: equal to it or containing it whole. */
export function isRight(score: Score | null): boolean {
  return score != null && (score.exact || score.contains);
}

export type Filter = "all" | "changed" | "still_wrong" | "ft_wrong_fs_right" | "learned";

export const FILTERS: { value: Filter; label: string; title: string }[] = [
  { value: "all", label: "All", title: "Every evaluation question" },
  { value: "changed", label: "Changed by tuning", title: "The fine-tuned answer differs from the base answer" },
  { value: "learned", label: "Learned", title: "Base wrong, fine-tuned right" },
  { value: "still_wrong", label: "Still wrong", title: "The fine-tuned answer misses the reference" },
  { value: "ft_wrong_fs_right", label: "Fine-tuned wrong, few-shot right", title: "Prompting with examples got it, fine-tuning did not" },
];

export function matches(answer: Answer, filter: Filter): boolean {
  const base = scoreOf(answer, "base");
  const fewShot = scoreOf(answer, "few_shot");
  const tuned = scoreOf(answer, "fine_tuned");
  switch (filter) {
    case "all":
      return true;
    case "changed":
      return answer.fine_tuned.trim() !== answer.base.trim();
    case "learned":
      return tuned != null && isRight(tuned) && !isRight(base);
    case "still_wrong":
      return tuned != null && !isRight(tuned);
    case "ft_wrong_fs_right":
      return tuned != null && !isRight(tuned) && isRight(fewShot);
  }
}

export type Sort = "order" | "delta_logprob" | "tuned_f1" | "tuned_logprob";

export const SORTS: { value: Sort; label: string }[] = [
  { value: "order", label: "question order" },
  { value: "delta_logprob", label: "Δ log p(ref), most learned first" },
  { value: "tuned_logprob", label: "fine-tuned log p(ref), lowest first" },
  { value: "tuned_f1", label: "fine-tuned F1, lowest first" },
];

/** Fine-tuned minus base mean log-probability of the reference: learning shows here even
 * when the greedy text still misses. */
export function deltaLogprob(answer: Answer): number | null {
  const b = scoreOf(answer, "base")?.logprob;
  const t = scoreOf(answer, "fine_tuned")?.logprob;
  return b != null && t != null ? t - b : null;
}

function key(answer: Answer, sort: Sort): number {
  switch (sort) {
    case "order":
      return 0;
    case "delta_logprob":
      return -(deltaLogprob(answer) ?? Number.NEGATIVE_INFINITY);
    case "tuned_logprob":
      return scoreOf(answer, "fine_tuned")?.logprob ?? Number.POSITIVE_INFINITY;
    case "tuned_f1":
      return scoreOf(answer, "fine_tuned")?.f1 ?? Number.POSITIVE_INFINITY;
  }
}

/** Answers filtered and sorted, each with its 1-based position in the run. */
export function view(answers: Answer[], filter: Filter, sort: Sort): { answer: Answer; index: number }[] {
  const rows = answers.map((answer, index) => ({ answer, index: index + 1 })).filter((r) => matches(r.answer, filter));
  if (sort === "order") return rows;
  return rows.sort((a, b) => key(a.answer, sort) - key(b.answer, sort) || a.index - b.index);
}

export interface ColumnSummary {
  questions: number;
  exact: number | null;
  contains: number | null;
  f1: number | null;
  logprob: number | null;
}

/** Per model over the questions with a reference; the gateway's aggregates when given. */
export function columnSummary(answers: Answer[], model: Model, stored?: Schemas["AnswerColumnScores"] | null): ColumnSummary {
  if (stored) {
    return {
      questions: stored.questions,
      exact: stored.exact_match_rate ?? null,
      contains: stored.contains_reference_rate ?? null,
      f1: stored.mean_token_f1 ?? null,
      logprob: stored.mean_ref_logprob ?? null,
    };
  }
  const scores = answers.map((a) => scoreOf(a, model)).filter((s): s is Score => s != null);
  const mean = (values: number[]) => (values.length ? values.reduce((s, v) => s + v, 0) / values.length : null);
  const logprobs = scores.map((s) => s.logprob).filter((v): v is number => v != null);
  return {
    questions: scores.length,
    exact: mean(scores.map((s) => (s.exact ? 1 : 0))),
    contains: mean(scores.map((s) => (s.contains || s.exact ? 1 : 0))),
    f1: mean(scores.map((s) => s.f1)),
    logprob: mean(logprobs),
  };
}
