import { describe, expect, it } from "vitest";
import { containsReference, exactMatch, matchKind, normalizeAnswer, tokenF1 } from "./textMatch";
import { sideText, wordDiff } from "./wordDiff";

describe("answer matching", () => {
  it("normalises like SQuAD", () => {
    expect(normalizeAnswer("The  Ombre!")).toBe("ombre");
    expect(normalizeAnswer("It is called Tessaly.")).toBe("it is called tessaly");
  });
  it("scores exact, contains, F1", () => {
    expect(exactMatch("Tessaly.", "tessaly")).toBe(true);
    expect(containsReference("The capital is Tessaly.", "Tessaly")).toBe(true);
    expect(containsReference("Tessalyan", "Tessaly")).toBe(false);
    // prediction "the varn crown" vs reference "varn crown coin": 2 common, p=2/2, r=2/3
    expect(tokenF1("the varn crown", "varn crown coin")).toBeCloseTo((2 * 1 * (2 / 3)) / (1 + 2 / 3));
    expect(tokenF1("", "")).toBe(1);
    expect(tokenF1("x", "")).toBe(0);
  });
  it("classifies an answer against its reference", () => {
    expect(matchKind("Tessaly", "Tessaly")).toBe("exact");
    expect(matchKind("The capital of Varnholt is Tessaly.", "Tessaly")).toBe("contains");
    expect(matchKind("Mount Varn", "Mount Kessel")).toBe("partial");
    expect(matchKind("Rostova", "Tessaly")).toBe("miss");
    expect(matchKind("anything", null)).toBeNull();
  });
});

describe("word diff", () => {
  it("marks removed and added words and keeps both texts", () => {
    const parts = wordDiff("The capital is Varnholt City.", "The capital is Tessaly.");
    expect(
      parts
        .filter((p) => p.type === "removed")
        .map((p) => p.text)
        .join(""),
    ).toBe("Varnholt City");
    expect(
      parts
        .filter((p) => p.type === "added")
        .map((p) => p.text)
        .join(""),
    ).toBe("Tessaly");
    expect(sideText(parts, "before")).toBe("The capital is Varnholt City.");
    expect(sideText(parts, "after")).toBe("The capital is Tessaly.");
  });
  it("is all 'same' for equal texts", () => {
    expect(wordDiff("a b", "a b").every((p) => p.type === "same")).toBe(true);
  });
});
