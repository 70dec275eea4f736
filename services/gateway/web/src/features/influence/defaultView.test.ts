import { describe, expect, it } from "vitest";
import { defaultView } from "./defaultView";

const PRESENT = [
  { method: "tracin", variant: "raw" },
  { method: "tracin", variant: "normalized" },
  { method: "datainf", variant: "raw" },
  { method: "datainf", variant: "normalized" },
];

describe("the influence explorer's default view", () => {
  it("opens on the run's own best-validated matrix, never on BM25", () => {
    const validated = [
      { method: "bm25", variant: "question", lds: 0.9 },
      { method: "datainf", variant: "raw", lds: 0.4 },
      { method: "tracin", variant: "normalized", lds: 0.2 },
    ];
    expect(defaultView(PRESENT, ["tracin", "datainf"], validated)).toEqual({ method: "datainf", variant: "raw" });
  });

  it("falls back to the measured order, then to the run's first method, normalised", () => {
    const evidence = [
      { method: "ekfac", variant: "raw" },
      { method: "datainf", variant: "normalized" },
    ];
    expect(defaultView(PRESENT, ["tracin", "datainf"], null, evidence)).toEqual({ method: "datainf", variant: "normalized" });
    expect(defaultView(PRESENT, ["tracin", "datainf"], [], [])).toEqual({ method: "tracin", variant: "normalized" });
    expect(defaultView([{ method: "ekfac", variant: "raw" }], [], null, [])).toEqual({ method: "ekfac", variant: "raw" });
    expect(defaultView([], [], null, [])).toBeNull();
  });
});
