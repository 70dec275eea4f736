import { describe, expect, it } from "vitest";
import { checkDraft, emptyDraft, moveRow, moveRowTo, problemsFromApi, toBody, totalTokens, type Draft, type Row } from "./draft";
import { parsePastedRows } from "./paste";

const LIMITS = {
  max_training_pairs: 3,
  max_eval_questions: 2,
  max_text_chars: 20,
  max_total_tokens: 40,
  max_request_bytes: 1_000_000,
  max_prediction_samples: 32,
  min_prediction_step_interval: 5,
  max_active_runs_per_user: 100,
  max_run_estimated_s: 86_400,
  max_job_message_bytes: 1_000_000,
};

function row(key: string, question: string, answer = ""): Row {
  return { key, id: null, question, answer };
}

function draft(overrides: Partial<Draft> = {}): Draft {
  return {
    ...emptyDraft("HuggingFaceTB/SmolLM2-135M-Instruct"),
    name: "Facts",
    training: [row("a", "Capital of Varnholt?", "Tessaly"), row("b", "River?", "The Ombre")],
    evaluation: [row("e", "Which city?", "Tessaly")],
    ...overrides,
  };
}

describe("the experiment body", () => {
  it("drops blank rows and leaves out settings not chosen", () => {
    const body = toBody(
      draft({ training: [row("a", "Q", "A"), row("blank", "", "")], hyperparams: { learning_rate: 0.001, num_epochs: undefined } }),
    );
    expect(body.training_data).toEqual([{ question: "Q", answer: "A" }]);
    expect(body.eval_data).toEqual([{ question: "Which city?", answer: "Tessaly" }]);
    expect(body.hyperparams).toEqual({ learning_rate: 0.001 });
    expect("few_shot_k" in body).toBe(false);
  });
  it("sends an empty reference answer as none", () => {
    expect(toBody(draft({ evaluation: [row("e", "Q", "  ")] })).eval_data[0]!.answer).toBeNull();
  });
});

describe("limits before submit", () => {
  it("passes a valid draft", () => {
    expect(checkDraft(draft(), LIMITS)).toEqual([]);
  });
  it("names the row and the field", () => {
    const problems = checkDraft(draft({ training: [row("a", "Q", "")] }), LIMITS);
    expect(problems).toContainEqual({ rowKey: "a", column: "answer", message: "the answer is empty" });
  });
  it("enforces counts, lengths and the token budget", () => {
    const many = [row("1", "q", "a"), row("2", "q", "a"), row("3", "q", "a"), row("4", "q", "a")];
    expect(checkDraft(draft({ training: many }), LIMITS).map((p) => p.message)).toContain("at most 3 training pairs (this has 4)");
    const long = checkDraft(draft({ training: [row("a", "x".repeat(21), "y")] }), LIMITS);
    expect(long).toContainEqual({ rowKey: "a", column: "question", message: "at most 20 characters (this has 21)" });
    const big = draft({
      training: [
        row("a", "x".repeat(20), "y".repeat(20)),
        row("b", "x".repeat(20), "y".repeat(20)),
        row("c", "x".repeat(20), "y".repeat(20)),
      ],
    });
    expect(totalTokens(big)).toBe(35);
    expect(checkDraft(big, { ...LIMITS, max_total_tokens: 30 }).map((p) => p.message)).toContain("about 35 tokens in all; the limit is 30");
  });
});

describe("API errors on rows", () => {
  it("maps body indexes back to the rows on the page (blank rows skipped)", () => {
    const d = draft({ training: [row("a", "Q1", "A1"), row("blank", "", ""), row("c", "Q2", "")] });
    expect(problemsFromApi(d, [{ field: "training_data.1.answer", message: "too short" }])).toEqual([
      { rowKey: "c", column: "answer", message: "too short" },
    ]);
    expect(problemsFromApi(d, [{ field: "hyperparams.learning_rate", message: "bad" }])).toEqual([
      { field: "hyperparams.learning_rate", message: "bad" },
    ]);
  });
});

describe("reordering", () => {
  const rows = [row("a", "1"), row("b", "2"), row("c", "3")];
  it("moves by one place and stops at the ends", () => {
    expect(moveRow(rows, "b", -1).map((r) => r.key)).toEqual(["b", "a", "c"]);
    expect(moveRow(rows, "a", -1)).toBe(rows);
  });
  it("moves before another row (drag and drop)", () => {
    expect(moveRowTo(rows, "c", "a").map((r) => r.key)).toEqual(["c", "a", "b"]);
    expect(moveRowTo(rows, "a", null).map((r) => r.key)).toEqual(["b", "c", "a"]);
  });
});

describe("pasting many rows", () => {
  it("reads spreadsheet rows (tab-separated)", () => {
    expect(parsePastedRows("What is X?\tX is Y\nWho?\tMe\n")).toEqual([
      { question: "What is X?", answer: "X is Y" },
      { question: "Who?", answer: "Me" },
    ]);
  });
  it("reads blank-line separated blocks as question then answer", () => {
    expect(parsePastedRows("Q1\nA1\n\nQ2\nA2 line one\nline two")).toEqual([
      { question: "Q1", answer: "A1" },
      { question: "Q2", answer: "A2 line one line two" },
    ]);
  });
  it("reads plain lines as questions", () => {
    expect(parsePastedRows("one?\r\ntwo?\n")).toEqual([
      { question: "one?", answer: "" },
      { question: "two?", answer: "" },
    ]);
  });
  it("leaves a single-line paste to the cell", () => {
    expect(parsePastedRows("just text")).toBeNull();
  });
});
