import { describe, expect, it } from "vitest";
import { checkNumber, fieldSpecs, rangeText } from "./contract";

const doc = {
  components: {
    schemas: {
      Hyperparams: {
        properties: {
          learning_rate: { type: "number", default: 0.001, exclusiveMinimum: 0, maximum: 1 },
          num_epochs: { type: "integer", default: 3, minimum: 1, maximum: 1000 },
          few: { anyOf: [{ type: "integer", minimum: 0, maximum: 64 }, { type: "null" }], default: null },
          lr_scheduler: { type: "string", enum: ["constant", "linear"], default: "constant" },
        },
      },
    },
  },
};

describe("field specs from the OpenAPI document", () => {
  const specs = fieldSpecs(doc, "Hyperparams");
  it("reads defaults, types, ranges and choices", () => {
    expect(specs.learning_rate).toMatchObject({ type: "number", default: 0.001, exclusiveMinimum: 0, maximum: 1 });
    expect(specs.lr_scheduler?.enum).toEqual(["constant", "linear"]);
    expect(specs.few).toMatchObject({ type: "integer", minimum: 0, maximum: 64, default: null });
  });
  it("checks a value against its range", () => {
    expect(checkNumber(specs.learning_rate, 0)).toBe("above 0");
    expect(checkNumber(specs.learning_rate, 2)).toBe("at most 1");
    expect(checkNumber(specs.num_epochs, 2.5)).toBe("must be a whole number");
    expect(checkNumber(specs.num_epochs, 3)).toBeNull();
    expect(rangeText(specs.num_epochs)).toBe("≥ 1, ≤ 1000");
  });
  it("is empty for an unknown schema", () => {
    expect(fieldSpecs(doc, "Nope")).toEqual({});
  });
});
