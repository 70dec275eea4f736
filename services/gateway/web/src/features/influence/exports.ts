/** What the explorer exports: the matrix with ids and texts (CSV, JSON) and the heatmap
 * as an image (SVG here; PNG is the canvas's own). Plain functions, tested directly. */
import { colorOf, type Frame } from "./matrix";

export interface Texts {
  question: string;
  answer: string | null;
}

function csvField(value: string | number | null): string {
  if (value == null) return "";
  const text = String(value);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** One line per cell: the evaluation question, the training pair and the score, in the
 * matrix's own order (ids and texts, so the file stands on its own). */
export function matrixCsv(
  frame: Frame,
  evalTexts: Map<string, Texts>,
  trainTexts: Map<string, Texts>,
  meta: { method: string; variant: string },
): string {
  const lines = [["method", "variant", "eval_id", "eval_question", "train_id", "train_question", "train_answer", "score"].join(",")];
  for (let r = 0; r < frame.rows; r++) {
    const e = frame.rowIds[r]!;
    const et = evalTexts.get(e);
    for (let c = 0; c < frame.cols; c++) {
      const t = frame.colIds[c]!;
      const tt = trainTexts.get(t);
      const score = frame.values[r * frame.cols + c]!;
      lines.push(
        [meta.method, meta.variant, e, et?.question ?? "", t, tt?.question ?? "", tt?.answer ?? "", Number.isFinite(score) ? score : ""]
          .map(csvField)
          .join(","),
      );
    }
  }
  return `${lines.join("\n")}\n`;
}

/** Parse matrixCsv back into scores by (eval_id, train_id): what the tests compare with the API. */
export function parseMatrixCsv(text: string): Map<string, number> {
  const rows: string[][] = [];
  let field = "";
  let row: string[] = [];
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ",") {
      row.push(field);
      field = "";
    } else if (ch === "\n") {
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += ch;
  }
  const [header, ...body] = rows;
  const ei = header!.indexOf("eval_id");
  const ti = header!.indexOf("train_id");
  const si = header!.indexOf("score");
  return new Map(body.map((r) => [`${r[ei]}\u0000${r[ti]}`, Number(r[si])]));
}

export function matrixJson(
  frame: Frame,
  evalTexts: Map<string, Texts>,
  trainTexts: Map<string, Texts>,
  meta: { method: string; variant: string; runId: string; args?: unknown },
): string {
  const scores = Array.from({ length: frame.rows }, (_, r) =>
    Array.from(frame.values.subarray(r * frame.cols, (r + 1) * frame.cols), (v) => (Number.isFinite(v) ? v : null)),
  );
  return JSON.stringify(
    {
      run_id: meta.runId,
      method: meta.method,
      variant: meta.variant,
      args: meta.args ?? {},
      eval: frame.rowIds.map((id) => ({ id, question: evalTexts.get(id)?.question ?? null, reference: evalTexts.get(id)?.answer ?? null })),
      train: frame.colIds.map((id) => ({ id, question: trainTexts.get(id)?.question ?? null, answer: trainTexts.get(id)?.answer ?? null })),
      scores,
    },
    null,
    1,
  );
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

/** The heatmap in display order as SVG: one rect per cell, row labels, a legend. */
export function heatmapSvg(
  frame: Frame,
  rows: number[],
  cols: number[],
  sats: Float64Array,
  rowLabels: string[],
  title: string,
  cellSize = Math.max(2, Math.min(16, Math.floor(1200 / Math.max(cols.length, 1)))),
): string {
  const labelW = 260;
  const top = 40;
  const w = labelW + cols.length * cellSize + 20;
  const h = top + rows.length * cellSize + 60;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="Inter, sans-serif" font-size="11">`,
    `<rect width="${w}" height="${h}" fill="#ffffff"/>`,
    `<text x="${labelW}" y="24" font-size="13" font-weight="600" fill="#0f172a">${escapeXml(title)}</text>`,
  ];
  rows.forEach((r, i) => {
    const y = top + i * cellSize;
    if (cellSize >= 8)
      parts.push(
        `<text x="${labelW - 6}" y="${y + cellSize - 2}" text-anchor="end" fill="#334155">${escapeXml(rowLabels[i] ?? frame.rowIds[r]!)}</text>`,
      );
    cols.forEach((c, j) => {
      parts.push(
        `<rect x="${labelW + j * cellSize}" y="${y}" width="${cellSize}" height="${cellSize}" fill="${colorOf(frame.values[r * frame.cols + c]!, sats[r]!)}"/>`,
      );
    });
  });
  const ly = top + rows.length * cellSize + 20;
  const legendW = 200;
  parts.push(
    `<defs><linearGradient id="scale"><stop offset="0" stop-color="${colorOf(-1, 1)}"/><stop offset="0.5" stop-color="${colorOf(0, 1)}"/><stop offset="1" stop-color="${colorOf(1, 1)}"/></linearGradient></defs>`,
  );
  parts.push(`<rect x="${labelW}" y="${ly}" width="${legendW}" height="10" fill="url(#scale)"/>`);
  parts.push(
    `<text x="${labelW}" y="${ly + 24}" fill="#334155">negative</text><text x="${labelW + legendW / 2}" y="${ly + 24}" text-anchor="middle" fill="#334155">0</text><text x="${labelW + legendW}" y="${ly + 24}" text-anchor="end" fill="#334155">positive</text>`,
  );
  parts.push("</svg>");
  return parts.join("");
}

export function download(name: string, content: BlobPart, type: string): void {
  const blob = content instanceof Blob ? content : new Blob([content], { type });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
