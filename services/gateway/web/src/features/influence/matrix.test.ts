import { describe, expect, it } from "vitest";
import {
  agreement,
  averageRanks,
  cell,
  clusterOrder,
  colOrder,
  colorIndex,
  COLOR_LUT,
  frameOf,
  overallTop,
  pixels,
  ranksInRow,
  rowOrder,
  rowSaturations,
  saturation,
  spearman,
  topOfRow,
  topOverlap,
} from "./matrix";

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe("frames and ordering", () => {
  const f = frameOf(
    [
      [1, -2, 3],
      [0, 5, -1],
    ],
    ids("e", 2),
    ids("t", 3),
  );
  it("stores row-major", () => {
    expect(cell(f, 1, 1)).toBe(5);
    expect(cell(f, 0, 2)).toBe(3);
  });
  it("orders rows and columns by total influence", () => {
    expect(rowOrder(f, "input")).toEqual([0, 1]);
    expect(rowOrder(f, "total")).toEqual([1, 0]); // 4 > 2
    expect(colOrder(f, "total")).toEqual([1, 2, 0]); // 3, 2, 1
  });
});

describe("cluster order", () => {
  it("puts similar columns next to each other", () => {
    // Two groups of columns with opposite patterns, interleaved in input order.
    const a = [1, 0, 1, 0, 1];
    const b = [0, 1, 0, 1, 0];
    const noisy = (v: number[], s: number) => v.map((x, i) => x + ((i * 7 + s) % 5) * 0.01);
    const columns = [noisy(a, 1), noisy(b, 2), noisy(a, 3), noisy(b, 4), noisy(a, 5), noisy(b, 6)];
    const scores = Array.from({ length: 5 }, (_, r) => columns.map((c) => c[r]!));
    const order = clusterOrder(frameOf(scores, ids("e", 5), ids("t", 6)));
    expect([...order].sort()).toEqual([0, 1, 2, 3, 4, 5]);
    const group = (c: number) => c % 2;
    const switches = order.slice(1).filter((c, i) => group(c) !== group(order[i]!)).length;
    expect(switches).toBe(1);
  });
  it("handles constant and tiny inputs", () => {
    expect(clusterOrder(frameOf([[1, 1]], ["e"], ["a", "b"]))).toEqual([0, 1]);
    expect(clusterOrder(frameOf([[0, 0, 0]], ["e"], ["a", "b", "c"])).sort()).toEqual([0, 1, 2]);
  });
  it("orders 1000 columns", () => {
    const rows = 20;
    const cols = 1000;
    const scores = Array.from({ length: rows }, (_, r) =>
      Array.from({ length: cols }, (_, c) => Math.sin(r * 0.7 + (c % 7)) + (c % 3) * 0.1),
    );
    const order = clusterOrder(frameOf(scores, ids("e", rows), ids("t", cols)));
    expect(new Set(order).size).toBe(cols);
  });
});

describe("colour scale", () => {
  it("is white at zero, blue below, red above", () => {
    expect(colorIndex(0, 1)).toBe(128);
    const white = [COLOR_LUT[128 * 3], COLOR_LUT[128 * 3 + 1], COLOR_LUT[128 * 3 + 2]];
    expect(white).toEqual([247, 247, 247]);
    const blue = colorIndex(-1, 1) * 3;
    const red = colorIndex(1, 1) * 3;
    expect(COLOR_LUT[blue + 2]!).toBeGreaterThan(COLOR_LUT[blue]!);
    expect(COLOR_LUT[red]!).toBeGreaterThan(COLOR_LUT[red + 2]!);
    expect(colorIndex(5, 1)).toBe(256); // clipped
    expect(colorIndex(Number.NaN, 1)).toBe(128);
  });
  it("saturates at a quantile, shared or per row", () => {
    expect(saturation([0, 1, -2, 100], 0.5)).toBe(1);
    const f = frameOf(
      [
        [1, -1],
        [10, 5],
      ],
      ids("e", 2),
      ids("t", 2),
    );
    expect(Array.from(rowSaturations(f, "row"))).toEqual([1, 10]);
    const shared = rowSaturations(f, "shared");
    expect(shared[0]).toBe(shared[1]);
  });
  it("makes one pixel per cell in display order", () => {
    const f = frameOf([[1, -1]], ["e"], ["a", "b"]);
    const px = pixels(f, [0], [1, 0], new Float64Array([1]));
    expect(px.length).toBe(8);
    expect(px[2]!).toBeGreaterThan(px[0]!); // first drawn is the negative cell: blue
  });
});

describe("rankings", () => {
  const f = frameOf([[0.5, -0.2, 0.9, 0, -0.7]], ["e0"], ids("t", 5));
  it("ranks within a row, highest first", () => {
    expect(Array.from(ranksInRow([0.5, -0.2, 0.9]))).toEqual([2, 3, 1]);
  });
  it("lists the top positive and negative pairs", () => {
    const top = topOfRow(f, 0, 2);
    expect(top.positive.map((x) => x.id)).toEqual(["t2", "t0"]);
    expect(top.negative.map((x) => x.id)).toEqual(["t4", "t1"]);
    expect(top.positive[0]!.rank).toBe(1);
    expect(top.negative[0]!.rank).toBe(5);
  });
  it("sums influence over all questions", () => {
    const g = frameOf(
      [
        [1, -1, 0],
        [2, -3, 1],
      ],
      ids("e", 2),
      ids("t", 3),
    );
    const top = overallTop(g, 5);
    expect(top.positive.map((x) => [x.id, x.score])).toEqual([
      ["t0", 3],
      ["t2", 1],
    ]);
    expect(top.negative.map((x) => [x.id, x.score])).toEqual([["t1", -4]]);
  });
});

describe("agreement between methods", () => {
  it("uses average ranks for ties", () => {
    expect(Array.from(averageRanks([10, 20, 20, 30]))).toEqual([1, 2.5, 2.5, 4]);
  });
  it("computes Spearman's rho", () => {
    expect(spearman([1, 2, 3, 4], [10, 20, 30, 40])).toBeCloseTo(1);
    expect(spearman([1, 2, 3, 4], [4, 3, 2, 1])).toBeCloseTo(-1);
    // Hand-computed: ranks x = 1,2,3,4; y = 1,3,2,4: d² = 0+1+1+0 = 2; rho = 1 - 6*2/(4*15) = 0.8
    expect(spearman([1, 2, 3, 4], [1, 3, 2, 4])).toBeCloseTo(0.8);
  });
  it("aligns matrices by id and averages per row", () => {
    const a = frameOf(
      [
        [1, 2, 3],
        [3, 2, 1],
      ],
      ["e0", "e1"],
      ["t0", "t1", "t2"],
    );
    const b = frameOf(
      [
        [1, 2, 3],
        [1, 2, 3],
      ],
      ["e1", "e0"],
      ["t2", "t1", "t0"],
    );
    // b re-indexed: e0 -> [3,2,1], e1 -> [3,2,1]: row 0 rho = -1, row 1 rho = 1.
    const result = agreement(a, b)!;
    expect(result.perRow.map((x) => Math.round(x))).toEqual([-1, 1]);
    expect(result.mean).toBeCloseTo(0);
    expect(agreement(a, frameOf([[1]], ["x"], ["y"]))).toBeNull();
  });
  it("counts the shared top-k", () => {
    expect(topOverlap([5, 4, 3, 2, 1], [5, 1, 4, 3, 2], 2)).toBe(1);
  });
});
