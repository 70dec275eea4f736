/** Two runs side by side: what differs in their configuration, their loss curves on one
 * step axis, and how far their influence matrices agree. */
import type { Schemas } from "@/lib/api/client";

type RunSpec = Schemas["RunOut"]["config"];

export interface ConfigRow {
  key: string;
  a: string;
  b: string;
  differs: boolean;
}

function flatten(value: unknown, prefix: string, out: Map<string, string>): void {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, Array.isArray(value) ? value.join(", ") : value == null ? "–" : String(value));
  }
}

/** Every setting of both runs (data by size and content, not row by row). */
export function configRows(a: RunSpec, b: RunSpec): ConfigRow[] {
  const summarise = (spec: RunSpec) => {
    const { training_data, eval_data, ...rest } = spec;
    const out = new Map<string, string>();
    flatten(rest, "", out);
    out.set("training pairs", String(training_data.length));
    out.set("evaluation questions", String(eval_data.length));
    out.set("training data", fingerprint(training_data.map((p) => `${p.id}\u0000${p.question}\u0000${p.answer}`)));
    out.set("evaluation data", fingerprint(eval_data.map((q) => `${q.id}\u0000${q.question}\u0000${q.answer ?? ""}`)));
    return out;
  };
  const fa = summarise(a);
  const fb = summarise(b);
  const keys = [...new Set([...fa.keys(), ...fb.keys()])];
  return keys.map((key) => ({ key, a: fa.get(key) ?? "–", b: fb.get(key) ?? "–", differs: (fa.get(key) ?? "–") !== (fb.get(key) ?? "–") }));
}

/** A short content hash (FNV-1a) so "the same data" can be told at a glance. */
export function fingerprint(items: string[]): string {
  let h = 0x811c9dc5;
  for (const item of items) {
    for (let i = 0; i < item.length; i++) {
      h ^= item.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    h ^= 0x0a;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return `${items.length} rows · #${h.toString(16).padStart(8, "0")}`;
}

/** Two loss curves on the union of their steps (null where a run has no point). */
export function alignCurves(
  a: { step: number; loss: number }[],
  b: { step: number; loss: number }[],
): { x: number[]; a: (number | null)[]; b: (number | null)[] } {
  const ma = new Map(a.map((p) => [p.step, p.loss]));
  const mb = new Map(b.map((p) => [p.step, p.loss]));
  const x = [...new Set([...ma.keys(), ...mb.keys()])].sort((p, q) => p - q);
  return { x, a: x.map((s) => ma.get(s) ?? null), b: x.map((s) => mb.get(s) ?? null) };
}
