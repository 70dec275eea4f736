/** Words a training pair shares with an evaluation question (and its answer): shown
 * highlighted so a researcher can tell attribution from word overlap. */

const STOP = new Set(
  "a an and are as at be by for from has have he her his i in is it its of on or she that the their there they this to was were what when where which who whom why will with would you your how do does did can could".split(
    " ",
  ),
);

export function words(text: string): string[] {
  return text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? [];
}

export function contentWords(text: string): Set<string> {
  return new Set(words(text).filter((w) => w.length > 1 && !STOP.has(w)));
}

export interface Piece {
  text: string;
  shared: boolean;
}

/** `text` cut into pieces, the words that appear in `against` marked shared. */
export function highlightShared(text: string, against: Set<string>): Piece[] {
  const pieces: Piece[] = [];
  const re = /[\p{L}\p{N}]+/gu;
  let last = 0;
  for (const match of text.matchAll(re)) {
    const start = match.index ?? 0;
    if (start > last) pieces.push({ text: text.slice(last, start), shared: false });
    pieces.push({ text: match[0], shared: against.has(match[0].toLowerCase()) });
    last = start + match[0].length;
  }
  if (last < text.length) pieces.push({ text: text.slice(last), shared: false });
  return pieces;
}
