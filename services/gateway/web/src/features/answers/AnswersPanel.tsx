import type { Run } from "@/features/runs/api";

export function AnswersPanel({ run }: { run: Run }) {
  return <section className="panel" aria-label="Answers">{run.id}</section>;
}
