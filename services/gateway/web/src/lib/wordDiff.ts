import { diffWordsWithSpace } from "diff";

export interface DiffPart {
  text: string;
  type: "same" | "added" | "removed";
}

/** Word-level changes from `before` to `after` (whitespace kept, so the parts join back
 * into either text). */
export function wordDiff(before: string, after: string): DiffPart[] {
  return diffWordsWithSpace(before, after).map((part) => ({
    text: part.value,
    type: part.added ? "added" : part.removed ? "removed" : "same",
  }));
}

/** Join the parts of one side back into its text. */
export function sideText(parts: DiffPart[], side: "before" | "after"): string {
  return parts
    .filter((p) => p.type === "same" || p.type === (side === "before" ? "removed" : "added"))
    .map((p) => p.text)
    .join("");
}
