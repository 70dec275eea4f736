import type { RunStatus } from "@/lib/runStatus";

const TONE: Record<RunStatus, string> = {
  queued: "badge-warning",
  running: "badge-info badge-pulse",
  checkpointing: "badge-info badge-pulse",
  completed: "badge-success",
  failed: "badge-error",
  cancelled: "",
};

/** A run's or stage's status as a coloured dot and word (the word is what is read out). */
export function StatusBadge({ status, suffix }: { status: RunStatus; suffix?: string }) {
  return (
    <span className={`badge badge-dot ${TONE[status] ?? ""}`}>
      {status}
      {suffix ? <span style={{ fontWeight: 500, opacity: 0.85 }}>· {suffix}</span> : null}
    </span>
  );
}
