import { describe, expect, it } from "vitest";
import { yRange } from "./LineChart";

describe("chart y range", () => {
  it("starts at zero with headroom", () => {
    expect(yRange(0.5, 2.5)).toEqual([0, 2.5 + 2.5 * 0.08]);
  });
  it("keeps a constant series off the axis", () => {
    const [low, high] = yRange(0.01, 0.01);
    expect(low).toBe(0);
    expect(high).toBeGreaterThan(0.01);
    expect(high).toBeLessThan(0.02);
  });
  it("copes with no data and negative values", () => {
    expect(yRange(null, null)).toEqual([0, 1]);
    expect(yRange(-2, 1)[0]).toBe(-2);
  });
});
