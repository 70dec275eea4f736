/** Many rows pasted at once into a question cell: from a spreadsheet (tab-separated
 * columns, one row a line) or plain lines. */

export interface PastedRow {
  question: string;
  answer: string;
}

/** A paste that is more than one cell's worth of text becomes rows:
 * - lines with a tab: `question<TAB>answer` (more columns are joined into the answer);
 * - otherwise blocks separated by blank lines: the first line is the question, the rest
 *   the answer;
 * - otherwise one question per line.
 * Returns null for a plain single-line paste (it goes into the cell as usual). */
export function parsePastedRows(text: string): PastedRow[] | null {
  const normalized = text.replace(/\r\n?/g, "\n").replace(/\n+$/, "");
  if (!normalized.includes("\n") && !normalized.includes("\t")) return null;
  const lines = normalized.split("\n");
  if (lines.some((l) => l.includes("\t"))) {
    return lines
      .filter((l) => l.trim())
      .map((l) => {
        const [question, ...rest] = l.split("\t");
        return { question: question!.trim(), answer: rest.join(" ").trim() };
      });
  }
  if (/\n\s*\n/.test(normalized)) {
    return normalized
      .split(/\n\s*\n/)
      .map((block) =>
        block
          .split("\n")
          .map((l) => l.trim())
          .filter(Boolean),
      )
      .filter((block) => block.length > 0)
      .map(([question, ...answer]) => ({ question: question!, answer: answer.join(" ") }));
  }
  return lines
    .map((l) => l.trim())
    .filter(Boolean)
    .map((question) => ({ question, answer: "" }));
}
