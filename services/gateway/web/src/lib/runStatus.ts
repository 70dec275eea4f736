import type { Schemas } from "./api/client";

export type RunStatus = Schemas["RunOut"]["status"];

export const TERMINAL: ReadonlySet<RunStatus> = new Set(["completed", "failed", "cancelled"]);

export function isTerminal(status: RunStatus | null | undefined): boolean {
  return status != null && TERMINAL.has(status);
}

export function isActive(status: RunStatus | null | undefined): boolean {
  return status === "running" || status === "checkpointing";
}

/** Queued or at work: not ended yet. */
export function isUnfinished(status: RunStatus | null | undefined): boolean {
  return status === "queued" || isActive(status);
}
