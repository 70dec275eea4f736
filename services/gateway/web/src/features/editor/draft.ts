/** The experiment editor's data: a draft the page edits, how it becomes the API's body,
 * and the limits checked before anything is sent (plain functions, tested directly). */
import type { Schemas } from "@/lib/api/client";
import { estimateTokens } from "@/lib/format";

export type Hyperparams = Schemas["Hyperparams-Input"];
export type PredictionSettings = Schemas["PredictionSettings-Input"];
export type Limits = Schemas["Limits"];
type ExperimentOut = Schemas["ExperimentOut"];

/** One editable row: a training pair (answer required) or an evaluation question
 * (reference answer optional). `key` is the page's own handle, stable across edits and
 * moves; `id` is the experiment's id for the row, kept once it has one. */
export interface Row {
  key: string;
  id: string | null;
  question: string;
  answer: string;
}

export type InfluenceArgs = Record<string, Record<string, string | number | boolean | null>>;

export interface Draft {
  name: string;
  description: string;
  training: Row[];
  evaluation: Row[];
  modelId: string;
  hyperparams: Partial<Hyperparams>;
  influenceMethods: string[];
  influenceArgs: InfluenceArgs;
  fewShotK: number | null;
  maxNewTokens: number | null;
  predictions: Partial<PredictionSettings>;
}

let counter = 0;
export function newKey(): string {
  counter += 1;
  return `r${Date.now().toString(36)}${counter.toString(36)}`;
}

export function emptyRow(): Row {
  return { key: newKey(), id: null, question: "", answer: "" };
}

export function emptyDraft(defaultModel: string): Draft {
  return {
    name: "Untitled experiment",
    description: "",
    training: [emptyRow()],
    evaluation: [emptyRow()],
    modelId: defaultModel,
    hyperparams: {},
    influenceMethods: ["tracin"],
    influenceArgs: {},
    fewShotK: null,
    maxNewTokens: null,
    predictions: {},
  };
}

export function draftFromExperiment(e: ExperimentOut): Draft {
  return {
    name: e.name,
    description: e.description,
    training: e.training_data.map((p) => ({ key: newKey(), id: p.id, question: p.question, answer: p.answer })),
    evaluation: e.eval_data.map((q) => ({ key: newKey(), id: q.id, question: q.question, answer: q.answer ?? "" })),
    modelId: e.model_id,
    hyperparams: { ...e.hyperparams },
    influenceMethods: [...e.influence_methods],
    influenceArgs: structuredClone((e.influence_args ?? {}) as InfluenceArgs),
    fewShotK: e.few_shot_k,
    maxNewTokens: e.max_new_tokens,
    predictions: { ...e.predictions },
  };
}

/** Rows with nothing typed in them are not part of the experiment (the editor always
 * offers an empty row to type into). */
function filled(rows: Row[]): Row[] {
  return rows.filter((r) => r.question.trim() || r.answer.trim());
}

/** Where a row at `index` of the page's list ends up in the body (blank rows dropped),
 * so the API's `training_data.3.answer` can be put back on the right row. */
export function bodyIndexToKey(rows: Row[]): string[] {
  return filled(rows).map((r) => r.key);
}

function definedEntries<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined && v !== null && v !== "")) as Partial<T>;
}

/** The body of POST /api/experiments (and the changed fields of a PATCH). */
export function toBody(draft: Draft) {
  return {
    name: draft.name.trim() || "Untitled experiment",
    description: draft.description,
    training_data: filled(draft.training).map((r) => ({ ...(r.id ? { id: r.id } : {}), question: r.question, answer: r.answer })),
    eval_data: filled(draft.evaluation).map((r) => ({
      ...(r.id ? { id: r.id } : {}),
      question: r.question,
      answer: r.answer.trim() ? r.answer : null,
    })),
    model_id: draft.modelId,
    hyperparams: definedEntries(draft.hyperparams),
    influence_methods: draft.influenceMethods,
    influence_args: draft.influenceArgs,
    ...(draft.fewShotK != null ? { few_shot_k: draft.fewShotK } : {}),
    ...(draft.maxNewTokens != null ? { max_new_tokens: draft.maxNewTokens } : {}),
    predictions: definedEntries(draft.predictions),
  };
}

export interface Problem {
  /** A row's key and its column, or a top-level field name. */
  rowKey?: string;
  column?: "question" | "answer";
  field?: string;
  message: string;
}

export function rowTokens(row: Row): number {
  return estimateTokens(row.question) + estimateTokens(row.answer);
}

export function totalTokens(draft: Draft): number {
  return [...filled(draft.training), ...filled(draft.evaluation)].reduce((sum, r) => sum + rowTokens(r), 0);
}

/** What the gateway would refuse, found before sending: every problem names its row and
 * field (or the setting) and says the limit. */
export function checkDraft(draft: Draft, limits: Limits | undefined): Problem[] {
  const problems: Problem[] = [];
  const training = filled(draft.training);
  const evaluation = filled(draft.evaluation);
  if (!draft.name.trim()) problems.push({ field: "name", message: "give the experiment a name" });
  if (training.length === 0) problems.push({ field: "training_data", message: "add at least one training pair" });
  if (evaluation.length === 0) problems.push({ field: "eval_data", message: "add at least one evaluation question" });
  if (draft.influenceMethods.length === 0) problems.push({ field: "influence_methods", message: "choose at least one influence method" });
  for (const r of training) {
    if (!r.question.trim()) problems.push({ rowKey: r.key, column: "question", message: "the question is empty" });
    if (!r.answer.trim()) problems.push({ rowKey: r.key, column: "answer", message: "the answer is empty" });
  }
  for (const r of evaluation) {
    if (!r.question.trim()) problems.push({ rowKey: r.key, column: "question", message: "the question is empty" });
  }
  if (limits) {
    if (training.length > limits.max_training_pairs)
      problems.push({
        field: "training_data",
        message: `at most ${limits.max_training_pairs} training pairs (this has ${training.length})`,
      });
    if (evaluation.length > limits.max_eval_questions)
      problems.push({
        field: "eval_data",
        message: `at most ${limits.max_eval_questions} evaluation questions (this has ${evaluation.length})`,
      });
    for (const r of [...training, ...evaluation]) {
      for (const column of ["question", "answer"] as const) {
        if (r[column].length > limits.max_text_chars)
          problems.push({ rowKey: r.key, column, message: `at most ${limits.max_text_chars} characters (this has ${r[column].length})` });
      }
    }
    const tokens = totalTokens(draft);
    if (tokens > limits.max_total_tokens)
      problems.push({ field: "training_data", message: `about ${tokens} tokens in all; the limit is ${limits.max_total_tokens}` });
  }
  const ids = new Set<string>();
  for (const r of training) {
    if (r.id && ids.has(r.id)) problems.push({ rowKey: r.key, column: "question", message: `id ${r.id} is used twice` });
    if (r.id) ids.add(r.id);
  }
  return problems;
}

/** The gateway's field errors (`training_data.3.answer`) placed on the page's rows. */
export function problemsFromApi(draft: Draft, apiProblems: { field: string; message: string }[]): Problem[] {
  const keys = { training_data: bodyIndexToKey(draft.training), eval_data: bodyIndexToKey(draft.evaluation) };
  return apiProblems.map(({ field, message }) => {
    const [list, index, column] = field.split(".");
    if ((list === "training_data" || list === "eval_data") && index !== undefined && /^\d+$/.test(index)) {
      const rowKey = keys[list][Number(index)];
      const col = column === "answer" ? "answer" : column === "question" ? "question" : undefined;
      if (rowKey) return { rowKey, ...(col ? { column: col } : {}), message };
    }
    return { field, message };
  });
}

/** Move the row with `key` by `delta` places (Alt+↑/↓, drag and drop). */
export function moveRow(rows: Row[], key: string, delta: number): Row[] {
  const from = rows.findIndex((r) => r.key === key);
  const to = from + delta;
  if (from < 0 || to < 0 || to >= rows.length) return rows;
  const next = [...rows];
  const [row] = next.splice(from, 1);
  next.splice(to, 0, row!);
  return next;
}

export function moveRowTo(rows: Row[], key: string, beforeKey: string | null): Row[] {
  const row = rows.find((r) => r.key === key);
  if (!row || key === beforeKey) return rows;
  const rest = rows.filter((r) => r.key !== key);
  const at = beforeKey ? rest.findIndex((r) => r.key === beforeKey) : rest.length;
  rest.splice(at < 0 ? rest.length : at, 0, row);
  return rest;
}
