import { describe, expect, it } from "vitest";
import { columnSummary, deltaLogprob, matches, scoreOf, view, type Answer } from "./answers";

function answer(
  id: string,
  base: string,
  few: string,
  tuned: string,
  reference: string | null,
  logprobs?: [number, number, number],
): Answer {
  const score = (text: string, lp: number | null) => ({
    exact_match: text.toLowerCase() === (reference ?? "").toLowerCase(),
    contains_reference: reference != null && text.toLowerCase().includes(reference.toLowerCase()),
    token_f1: text.toLowerCase() === (reference ?? "").toLowerCase() ? 1 : 0,
    ref_logprob: lp,
  });
  return {
    eval_id: id,
    question: `q ${id}`,
    reference,
    base,
    few_shot: few,
    fine_tuned: tuned,
    scores: logprobs ? { base: score(base, logprobs[0]), few_shot: score(few, logprobs[1]), fine_tuned: score(tuned, logprobs[2]) } : null,
  } as Answer;
}

const answers = [
  answer("a", "Rostova", "Tessaly", "Tessaly", "Tessaly", [-7, -1, -0.2]),
  answer("b", "Danube", "Tessaly River", "Dravik", "The Ombre", [-7.5, -5, -3]),
  answer("c", "no idea", "no idea", "no idea", null),
  answer("d", "Mount Varn", "Mount Kessel", "Mount Kessel", "Mount Kessel", [-5, -1.4, -0.1]),
];

describe("answers", () => {
  it("uses stored scores, or scores the text when there are none", () => {
    expect(scoreOf(answers[0]!, "fine_tuned")).toEqual({ exact: true, contains: true, f1: 1, logprob: -0.2 });
    const unscored = answer("x", "The capital is Tessaly", "", "", "Tessaly");
    expect(scoreOf(unscored, "base")).toMatchObject({ exact: false, contains: true, logprob: null });
    expect(scoreOf(answers[2]!, "base")).toBeNull();
  });
  it("filters the cases researchers ask for", () => {
    expect(answers.filter((a) => matches(a, "changed")).map((a) => a.eval_id)).toEqual(["a", "b", "d"]);
    expect(answers.filter((a) => matches(a, "still_wrong")).map((a) => a.eval_id)).toEqual(["b"]);
    expect(answers.filter((a) => matches(a, "learned")).map((a) => a.eval_id)).toEqual(["a", "d"]);
    const fsRight = answer("e", "x", "Tessaly", "Rostova", "Tessaly", [-3, -1, -2]);
    expect(matches(fsRight, "ft_wrong_fs_right")).toBe(true);
    expect(matches(answers[0]!, "ft_wrong_fs_right")).toBe(false);
  });
  it("sorts by what fine-tuning changed", () => {
    expect(deltaLogprob(answers[0]!)).toBeCloseTo(6.8);
    expect(view(answers, "all", "delta_logprob").map((r) => r.answer.eval_id)).toEqual(["a", "d", "b", "c"]);
    expect(view(answers, "all", "order").map((r) => r.index)).toEqual([1, 2, 3, 4]);
  });
  it("aggregates a column over the questions with a reference", () => {
    const tuned = columnSummary(answers, "fine_tuned");
    expect(tuned.questions).toBe(3);
    expect(tuned.exact).toBeCloseTo(2 / 3);
    expect(tuned.logprob).toBeCloseTo((-0.2 - 3 - 0.1) / 3);
    const stored = columnSummary(answers, "base", {
      questions: 7,
      exact_match_rate: 0.5,
      contains_reference_rate: 0.5,
      mean_token_f1: 0.25,
      mean_ref_logprob: -2,
    });
    expect(stored).toEqual({ questions: 7, exact: 0.5, contains: 0.5, f1: 0.25, logprob: -2 });
  });
});
