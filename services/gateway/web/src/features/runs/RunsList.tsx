import { GitCompare } from "lucide-react";
import { useState } from "react";
import { Link, useNavigate } from "react-router";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { formatLr, formatNumber, formatRelative, shortId } from "@/lib/format";
import { useRunList, type Run } from "./api";

function resultText(run: Run): string {
  if (run.status === "failed") return run.error ? run.error.slice(0, 60) : "failed";
  if (run.status === "cancelled") return "cancelled";
  if (run.status === "queued") return "waiting for a trainer";
  if (run.status === "completed") {
    const failed = Object.entries(run.stages)
      .filter(([, s]) => s === "failed")
      .map(([k]) => k);
    return failed.length ? `done · ${failed.join(", ")} failed` : "done";
  }
  const active = Object.entries(run.stages).find(([, s]) => s === "running" || s === "checkpointing");
  return active ? `${active[0].replace("influence.", "")} ${Math.round(run.progress * 100)}%` : `${Math.round(run.progress * 100)}%`;
}

/** Every run of an experiment with its config, status and result; pick two to compare. */
export function RunsList({ experimentId }: { experimentId: string }) {
  const runs = useRunList(experimentId);
  const navigate = useNavigate();
  const [picked, setPicked] = useState<string[]>([]);
  const list = runs.data ?? [];

  function toggle(id: string) {
    setPicked((p) => (p.includes(id) ? p.filter((x) => x !== id) : [...p.slice(-1), id]));
  }

  return (
    <section className="panel" aria-label="Runs">
      <div className="panel-header">
        <h2>Runs</h2>
        <span className="meta num">{list.length}</span>
        <span className="spacer" />
        <button
          type="button"
          className="btn btn-sm"
          disabled={picked.length !== 2}
          title={picked.length === 2 ? "Compare the two runs" : "Tick two runs to compare them"}
          onClick={() => navigate(`/compare?a=${picked[0]}&b=${picked[1]}`)}
        >
          <GitCompare /> Compare{picked.length ? ` (${picked.length}/2)` : ""}
        </button>
      </div>
      {runs.isPending ? (
        <SkeletonRows rows={3} label="Loading runs" />
      ) : runs.isError ? (
        <ErrorState error={runs.error} onRetry={() => void runs.refetch()} />
      ) : list.length === 0 ? (
        <EmptyState title="No runs yet">
          <p>Start a run to fine-tune and trace the answers.</p>
        </EmptyState>
      ) : (
        <div className="panel-scroll" style={{ maxHeight: 300 }}>
          <table className="table table-dense runs-table">
            <thead>
              <tr>
                <th aria-label="Compare" />
                <th>Run</th>
                <th>Status</th>
                <th>Result</th>
                <th>Config</th>
                <th className="right">Loss</th>
                <th className="right">Started</th>
              </tr>
            </thead>
            <tbody>
              {list.map((run) => (
                <tr key={run.id} aria-selected={picked.includes(run.id)}>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`Compare run ${shortId(run.id)}`}
                      checked={picked.includes(run.id)}
                      onChange={() => toggle(run.id)}
                    />
                  </td>
                  <td>
                    <Link to={`/runs/${run.id}`} className="mono">
                      {shortId(run.id)}
                    </Link>
                  </td>
                  <td>
                    <StatusBadge status={run.status} />
                  </td>
                  <td className="muted" style={{ maxWidth: 180 }}>
                    {run.status === "running" ? (
                      <div className="row">
                        <ProgressBar value={run.progress} label={`Run ${shortId(run.id)} progress`} className="mini-progress" />
                        <span className="num">{Math.round(run.progress * 100)}%</span>
                      </div>
                    ) : (
                      <span className="truncate" style={{ display: "block" }} title={run.error ?? undefined}>
                        {resultText(run)}
                      </span>
                    )}
                  </td>
                  <td className="mono dim" style={{ fontSize: "var(--text-xs)" }}>
                    lr {formatLr(run.config.hyperparams?.learning_rate)} · {run.config.hyperparams?.num_epochs}ep · r
                    {run.config.hyperparams?.lora_rank}
                  </td>
                  <td className="right num">{formatNumber(run.loss, 3)}</td>
                  <td className="right muted">{formatRelative(run.created_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
