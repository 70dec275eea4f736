import type { Run } from "@/features/runs/api";

export function InfluenceExplorer({ run }: { run: Run }) {
  return <section className="panel" aria-label="Influence">{run.id}</section>;
}
