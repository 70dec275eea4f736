import { describe, expect, it } from "vitest";
import { alignCurves, configRows, fingerprint } from "./compare";

const spec = (lr: number, answers: string[]) =>
  ({
    model_id: "m",
    training_data: answers.map((a, i) => ({ id: `t${i}`, question: `q${i}`, answer: a })),
    eval_data: [{ id: "e0", question: "q", answer: null }],
    hyperparams: { learning_rate: lr, num_epochs: 3, lora_target_modules: ["q_proj", "v_proj"] },
    influence_methods: ["tracin"],
    influence_args: {},
    few_shot_k: 3,
    max_new_tokens: 48,
    predictions: { enabled: true },
  }) as never;

describe("run comparison", () => {
  it("lists every setting and marks what differs", () => {
    const rows = configRows(spec(1e-3, ["a", "b"]), spec(5e-4, ["a", "c"]));
    const byKey = new Map(rows.map((r) => [r.key, r]));
    expect(byKey.get("hyperparams.learning_rate")).toMatchObject({ a: "0.001", b: "0.0005", differs: true });
    expect(byKey.get("hyperparams.num_epochs")?.differs).toBe(false);
    expect(byKey.get("hyperparams.lora_target_modules")?.a).toBe("q_proj, v_proj");
    expect(byKey.get("training pairs")?.differs).toBe(false);
    expect(byKey.get("training data")?.differs).toBe(true);
  });
  it("fingerprints data by content", () => {
    expect(fingerprint(["x", "y"])).toBe(fingerprint(["x", "y"]));
    expect(fingerprint(["x", "y"])).not.toBe(fingerprint(["y", "x"]));
  });
  it("puts two loss curves on one step axis", () => {
    expect(
      alignCurves(
        [
          { step: 1, loss: 2 },
          { step: 3, loss: 1 },
        ],
        [
          { step: 2, loss: 5 },
          { step: 3, loss: 4 },
        ],
      ),
    ).toEqual({
      x: [1, 2, 3],
      a: [2, null, 1],
      b: [null, 5, 4],
    });
  });
});
