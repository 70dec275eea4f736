import { describe, expect, it } from "vitest";
import { heatmapSvg, matrixCsv, matrixJson, parseMatrixCsv } from "./exports";
import { frameOf } from "./matrix";
import { contentWords, highlightShared } from "./text";

const frame = frameOf(
  [
    [0.5, -0.25],
    [Number.NaN, 1e-7],
  ],
  ["e0", "e1"],
  ["t0", "t1"],
);
const evalTexts = new Map([
  ["e0", { question: 'Which city, "the capital"?', answer: "Tessaly" }],
  ["e1", { question: "Second?", answer: null }],
]);
const trainTexts = new Map([
  ["t0", { question: "Capital of Varnholt?", answer: "Tessaly,\nof course" }],
  ["t1", { question: "River?", answer: "Ombre" }],
]);

describe("exports", () => {
  it("writes CSV with ids, texts and scores that parse back exactly", () => {
    const csv = matrixCsv(frame, evalTexts, trainTexts, { method: "tracin", variant: "raw" });
    expect(csv.split("\n")[0]).toBe("method,variant,eval_id,eval_question,train_id,train_question,train_answer,score");
    expect(csv).toContain('"Which city, ""the capital""?"');
    const back = parseMatrixCsv(csv);
    expect(back.get("e0\u0000t0")).toBe(0.5);
    expect(back.get("e0\u0000t1")).toBe(-0.25);
    expect(back.get("e1\u0000t1")).toBe(1e-7);
    expect(back.get("e1\u0000t0")).toBe(0); // a non-finite cell is empty
    expect(back.size).toBe(4);
  });
  it("writes JSON with texts and null for non-finite cells", () => {
    const json = JSON.parse(matrixJson(frame, evalTexts, trainTexts, { method: "tracin", variant: "raw", runId: "r" }));
    expect(json.scores).toEqual([
      [0.5, -0.25],
      [null, 1e-7],
    ]);
    expect(json.train[0]).toEqual({ id: "t0", question: "Capital of Varnholt?", answer: "Tessaly,\nof course" });
  });
  it("draws one rect per cell in SVG", () => {
    const svg = heatmapSvg(frame, [0, 1], [1, 0], new Float64Array([1, 1]), ["E1", "E2"], "TracIn <raw>");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("TracIn &lt;raw&gt;");
    expect((svg.match(/<rect x=/g) ?? []).length).toBe(4 + 1);
  });
});

describe("shared words", () => {
  it("marks the words a training pair shares with the question", () => {
    const against = contentWords("Which city is the capital of Varnholt? Tessaly");
    const pieces = highlightShared("What is the capital of Varnholt?", against);
    expect(pieces.filter((p) => p.shared).map((p) => p.text)).toEqual(["capital", "Varnholt"]);
    expect(pieces.map((p) => p.text).join("")).toBe("What is the capital of Varnholt?");
  });
});
