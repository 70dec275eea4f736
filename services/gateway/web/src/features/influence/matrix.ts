/** The influence explorer's data logic: matrices as plain frames, ordering (input, total,
 * cluster), colour scaling, rankings and agreement between methods. No React, no API
 * shapes beyond the frame: the tests call these directly. */

/** An evaluation × training matrix, row-major. */
export interface Frame {
  rows: number;
  cols: number;
  values: Float64Array;
  rowIds: string[];
  colIds: string[];
}

export function frameOf(scores: readonly (readonly number[])[], rowIds: string[], colIds: string[]): Frame {
  const rows = scores.length;
  const cols = rows ? scores[0]!.length : colIds.length;
  const values = new Float64Array(rows * cols);
  scores.forEach((row, i) => values.set(row, i * cols));
  return { rows, cols, values, rowIds, colIds };
}

export function cell(frame: Frame, row: number, col: number): number {
  return frame.values[row * frame.cols + col]!;
}

export function rowOf(frame: Frame, row: number): Float64Array {
  return frame.values.subarray(row * frame.cols, (row + 1) * frame.cols);
}

export function columnOf(frame: Frame, col: number): Float64Array {
  const out = new Float64Array(frame.rows);
  for (let r = 0; r < frame.rows; r++) out[r] = frame.values[r * frame.cols + col]!;
  return out;
}

// ------------------------------------------------------------------ ordering
export type RowOrder = "input" | "total";
export type ColOrder = "input" | "total" | "cluster";

function finite(v: number): number {
  return Number.isFinite(v) ? v : 0;
}

export function rowTotals(frame: Frame): Float64Array {
  const totals = new Float64Array(frame.rows);
  for (let r = 0; r < frame.rows; r++) {
    let s = 0;
    for (let c = 0; c < frame.cols; c++) s += finite(frame.values[r * frame.cols + c]!);
    totals[r] = s;
  }
  return totals;
}

export function colTotals(frame: Frame): Float64Array {
  const totals = new Float64Array(frame.cols);
  for (let r = 0; r < frame.rows; r++)
    for (let c = 0; c < frame.cols; c++) totals[c] = totals[c]! + finite(frame.values[r * frame.cols + c]!);
  return totals;
}

function identity(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Largest total first; ties keep input order. */
function byTotal(totals: Float64Array): number[] {
  return identity(totals.length).sort((a, b) => totals[b]! - totals[a]! || a - b);
}

export function rowOrder(frame: Frame, order: RowOrder): number[] {
  return order === "total" ? byTotal(rowTotals(frame)) : identity(frame.rows);
}

export function colOrder(frame: Frame, order: ColOrder): number[] {
  if (order === "total") return byTotal(colTotals(frame));
  if (order === "cluster") return clusterOrder(frame);
  return identity(frame.cols);
}

/** Columns ordered so that similar ones sit together: average-linkage hierarchical
 * clustering on correlation distance (1 − cosine of the centred columns), leaves read
 * left to right as seaborn's clustermap does. The nearest-neighbour-chain algorithm keeps
 * it O(m²) in time and memory: a 1000-column matrix takes a fraction of a second. */
export function clusterOrder(frame: Frame): number[] {
  const m = frame.cols;
  if (m <= 2) return identity(m);
  const n = frame.rows;
  // Centred, unit-length columns; a constant column becomes zero (distance 1 to all).
  const cols: Float64Array[] = [];
  for (let c = 0; c < m; c++) {
    const v = columnOf(frame, c).map(finite);
    const mean = v.reduce((s, x) => s + x, 0) / (n || 1);
    let norm = 0;
    for (let i = 0; i < n; i++) {
      v[i] = v[i]! - mean;
      norm += v[i]! * v[i]!;
    }
    norm = Math.sqrt(norm);
    if (norm > 0) for (let i = 0; i < n; i++) v[i] = v[i]! / norm;
    cols.push(v);
  }
  const dist = new Float64Array(m * m);
  for (let a = 0; a < m; a++) {
    for (let b = a + 1; b < m; b++) {
      let dot = 0;
      const x = cols[a]!;
      const y = cols[b]!;
      for (let i = 0; i < n; i++) dot += x[i]! * y[i]!;
      const d = 1 - dot;
      dist[a * m + b] = d;
      dist[b * m + a] = d;
    }
  }
  // Clusters live at the index of one of their members; `size` 0 marks a merged-away index.
  const size = new Int32Array(m).fill(1);
  const members: number[][] = identity(m).map((i) => [i]);
  const active = new Set(identity(m));
  const chain: number[] = [];
  const d = (a: number, b: number) => dist[a * m + b]!;
  while (active.size > 1) {
    if (chain.length === 0) chain.push(Math.min(...active));
    const top = chain[chain.length - 1]!;
    const previous = chain.length > 1 ? chain[chain.length - 2]! : -1;
    let best = -1;
    let bestD = Number.POSITIVE_INFINITY;
    for (const other of active) {
      if (other === top) continue;
      const dd = d(top, other);
      // Prefer the previous link on ties, so the chain ends in a reciprocal pair.
      if (dd < bestD || (dd === bestD && other === previous)) {
        best = other;
        bestD = dd;
      }
    }
    if (best === previous) {
      chain.pop();
      chain.pop();
      // Merge `best` into `top` (average linkage, Lance–Williams update).
      const [keep, gone] = top < best ? [top, best] : [best, top];
      const sk = size[keep]!;
      const sg = size[gone]!;
      for (const other of active) {
        if (other === keep || other === gone) continue;
        const nd = (sk * d(keep, other) + sg * d(gone, other)) / (sk + sg);
        dist[keep * m + other] = nd;
        dist[other * m + keep] = nd;
      }
      size[keep] = sk + sg;
      size[gone] = 0;
      members[keep] = [...members[keep]!, ...members[gone]!];
      members[gone] = [];
      active.delete(gone);
    } else {
      chain.push(best);
    }
  }
  return members[[...active][0]!]!;
}

// ------------------------------------------------------------------ scaling
export type ScaleMode = "shared" | "row";

/** The value at which colours saturate: a high quantile of |v| (so one outlier does not
 * wash the rest out to white), per matrix or per row. */
export function saturation(values: ArrayLike<number>, quantile = 0.99): number {
  const abs: number[] = [];
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (Number.isFinite(v)) abs.push(Math.abs(v));
  }
  if (abs.length === 0) return 1;
  abs.sort((a, b) => a - b);
  const q = abs[Math.min(abs.length - 1, Math.floor(quantile * (abs.length - 1)))]!;
  return q > 0 ? q : abs[abs.length - 1]! || 1;
}

export function rowSaturations(frame: Frame, mode: ScaleMode): Float64Array {
  const out = new Float64Array(frame.rows);
  if (mode === "shared") {
    out.fill(saturation(frame.values));
  } else {
    for (let r = 0; r < frame.rows; r++) out[r] = saturation(rowOf(frame, r), 1);
  }
  return out;
}

/** The diverging scale: blue (negative) through white (zero) to red (positive), ColorBrewer
 * RdBu, as 257 RGB entries for t in [−1, 1]. */
const STOPS: [number, number, number][] = [
  [5, 48, 97],
  [33, 102, 172],
  [67, 147, 195],
  [146, 197, 222],
  [209, 229, 240],
  [247, 247, 247],
  [253, 219, 199],
  [244, 165, 130],
  [214, 96, 77],
  [178, 24, 43],
  [103, 0, 31],
];

export const COLOR_LUT: Uint8ClampedArray = (() => {
  const lut = new Uint8ClampedArray(257 * 3);
  for (let i = 0; i <= 256; i++) {
    const t = (i / 256) * (STOPS.length - 1);
    const lo = Math.floor(t);
    const hi = Math.min(lo + 1, STOPS.length - 1);
    const f = t - lo;
    for (let k = 0; k < 3; k++) lut[i * 3 + k] = Math.round(STOPS[lo]![k]! * (1 - f) + STOPS[hi]![k]! * f);
  }
  return lut;
})();

/** Index into COLOR_LUT for a value at a saturation (0 = deepest blue, 128 = white, 256 = deepest red). */
export function colorIndex(value: number, sat: number): number {
  if (!Number.isFinite(value) || sat <= 0) return 128;
  const t = Math.max(-1, Math.min(1, value / sat));
  return Math.round((t + 1) * 128);
}

export function colorOf(value: number, sat: number): string {
  const i = colorIndex(value, sat) * 3;
  return `rgb(${COLOR_LUT[i]}, ${COLOR_LUT[i + 1]}, ${COLOR_LUT[i + 2]})`;
}

/** RGBA pixels, one per cell, in display order (what the canvas draws and zooms). */
export function pixels(frame: Frame, rows: number[], cols: number[], sats: Float64Array): Uint8ClampedArray {
  const out = new Uint8ClampedArray(rows.length * cols.length * 4);
  let p = 0;
  for (const r of rows) {
    const base = r * frame.cols;
    const sat = sats[r]!;
    for (const c of cols) {
      const i = colorIndex(frame.values[base + c]!, sat) * 3;
      out[p] = COLOR_LUT[i]!;
      out[p + 1] = COLOR_LUT[i + 1]!;
      out[p + 2] = COLOR_LUT[i + 2]!;
      out[p + 3] = 255;
      p += 4;
    }
  }
  return out;
}

// ------------------------------------------------------------------ rankings
export interface Ranked {
  col: number;
  id: string;
  score: number;
  /** 1-based, within the row, highest score first. */
  rank: number;
}

/** Ranks of every column within a row, highest score first (1-based; ties share the
 * better rank's order by column). */
export function ranksInRow(values: ArrayLike<number>): Int32Array {
  const order = Array.from({ length: values.length }, (_, i) => i).sort((a, b) => finite(values[b]!) - finite(values[a]!) || a - b);
  const ranks = new Int32Array(values.length);
  order.forEach((col, i) => (ranks[col] = i + 1));
  return ranks;
}

/** The strongest positive and negative training pairs of one evaluation question. */
export function topOfRow(frame: Frame, row: number, k: number): { positive: Ranked[]; negative: Ranked[] } {
  const values = rowOf(frame, row);
  const ranks = ranksInRow(values);
  const all = Array.from(values, (score, col) => ({ col, id: frame.colIds[col]!, score, rank: ranks[col]! })).filter((x) =>
    Number.isFinite(x.score),
  );
  return {
    positive: all
      .filter((x) => x.score > 0)
      .sort((a, b) => b.score - a.score || a.col - b.col)
      .slice(0, k),
    negative: all
      .filter((x) => x.score < 0)
      .sort((a, b) => a.score - b.score || a.col - b.col)
      .slice(0, k),
  };
}

/** Training pairs with the largest total positive and negative influence over all rows. */
export function overallTop(frame: Frame, k: number): { positive: Ranked[]; negative: Ranked[] } {
  const pos = new Float64Array(frame.cols);
  const neg = new Float64Array(frame.cols);
  for (let r = 0; r < frame.rows; r++) {
    for (let c = 0; c < frame.cols; c++) {
      const v = finite(frame.values[r * frame.cols + c]!);
      if (v > 0) pos[c] = pos[c]! + v;
      else neg[c] = neg[c]! + v;
    }
  }
  const make = (totals: Float64Array, sign: 1 | -1) =>
    Array.from(totals, (score, col) => ({ col, id: frame.colIds[col]!, score, rank: 0 }))
      .filter((x) => x.score * sign > 0)
      .sort((a, b) => sign * (b.score - a.score) || a.col - b.col)
      .slice(0, k)
      .map((x, i) => ({ ...x, rank: i + 1 }));
  return { positive: make(pos, 1), negative: make(neg, -1) };
}

// ------------------------------------------------------------------ agreement
/** Average ranks (ties share the mean of their positions), 1-based. */
export function averageRanks(values: ArrayLike<number>): Float64Array {
  const order = Array.from({ length: values.length }, (_, i) => i).sort((a, b) => values[a]! - values[b]!);
  const ranks = new Float64Array(values.length);
  let i = 0;
  while (i < order.length) {
    let j = i;
    while (j + 1 < order.length && values[order[j + 1]!] === values[order[i]!]) j++;
    const rank = (i + j) / 2 + 1;
    for (let k = i; k <= j; k++) ranks[order[k]!] = rank;
    i = j + 1;
  }
  return ranks;
}

function pearson(x: ArrayLike<number>, y: ArrayLike<number>): number {
  const n = x.length;
  let mx = 0;
  let my = 0;
  for (let i = 0; i < n; i++) {
    mx += x[i]!;
    my += y[i]!;
  }
  mx /= n;
  my /= n;
  let sxy = 0;
  let sxx = 0;
  let syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = x[i]! - mx;
    const dy = y[i]! - my;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : Number.NaN;
}

/** Spearman's ρ between two rankings of the same items (average ranks for ties). */
export function spearman(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length || x.length < 2) return Number.NaN;
  return pearson(averageRanks(x), averageRanks(y));
}

/** `b` re-indexed to `a`'s row and column ids (null when they share none). */
export function aligned(a: Frame, b: Frame): Frame | null {
  const rowIndex = new Map(b.rowIds.map((id, i) => [id, i]));
  const colIndex = new Map(b.colIds.map((id, i) => [id, i]));
  const rows = a.rowIds.map((id) => rowIndex.get(id));
  const cols = a.colIds.map((id) => colIndex.get(id));
  if (rows.some((r) => r === undefined) || cols.some((c) => c === undefined)) return null;
  const values = new Float64Array(a.rows * a.cols);
  rows.forEach((r, i) => cols.forEach((c, j) => (values[i * a.cols + j] = b.values[r! * b.cols + c!]!)));
  return { ...a, values };
}

/** Mean over evaluation questions of Spearman's ρ between two methods' rows, and each
 * row's own ρ. Null when the matrices do not cover the same questions and pairs. */
export function agreement(a: Frame, b: Frame): { mean: number; perRow: number[] } | null {
  const other = aligned(a, b);
  if (!other) return null;
  const perRow = Array.from({ length: a.rows }, (_, r) => spearman(rowOf(a, r), rowOf(other, r)));
  const usable = perRow.filter(Number.isFinite);
  return { mean: usable.length ? usable.reduce((s, v) => s + v, 0) / usable.length : Number.NaN, perRow };
}

/** How many of the top-k training pairs two rows share. */
export function topOverlap(a: ArrayLike<number>, b: ArrayLike<number>, k: number): number {
  const top = (v: ArrayLike<number>) =>
    new Set(
      Array.from({ length: v.length }, (_, i) => i)
        .sort((i, j) => finite(v[j]!) - finite(v[i]!) || i - j)
        .slice(0, k),
    );
  const ta = top(a);
  let shared = 0;
  for (const i of top(b)) if (ta.has(i)) shared++;
  return shared;
}
