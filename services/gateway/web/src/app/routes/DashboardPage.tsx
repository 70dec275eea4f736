import { FlaskConical, Plus } from "lucide-react";
import { Link, useNavigate } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { useMe } from "@/features/auth/api";
import { useExperimentList } from "@/features/experiments/api";
import { useRunList } from "@/features/runs/api";
import { formatDuration, formatNumber, formatRelative, shortId } from "@/lib/format";
import { isTerminal } from "@/lib/runStatus";
import "@/features/experiments/experiments.css";

/** Where a researcher lands: what is running, what finished lately, what they worked on. */
export function DashboardPage() {
  usePageCrumbs([{ label: "Dashboard" }]);
  const me = useMe();
  const navigate = useNavigate();
  const experiments = useExperimentList({ sort: "updated", limit: 8 });
  const runs = useRunList(undefined, 12);
  const names = new Map((experiments.data ?? []).map((e) => [e.id, e.name]));
  const active = (runs.data ?? []).filter((r) => !isTerminal(r.status));

  return (
    <div className="page">
      <div className="page-header">
        <h1>Welcome back{me.data?.display_name ? `, ${me.data.display_name}` : ""}</h1>
        <span className="grow" />
        <button type="button" className="btn btn-primary" onClick={() => navigate("/experiments/new")}>
          <Plus /> New experiment
        </button>
      </div>
      <div className="grid-4">
        <div className="panel stat-card">
          <div className="label">Active runs</div>
          <div className="value">{runs.data ? active.length : "–"}</div>
          <div className="sub">{active.length ? `${active.length} training or queued` : "nothing running"}</div>
        </div>
        <div className="panel stat-card">
          <div className="label">Recent runs</div>
          <div className="value">{runs.data?.length ?? "–"}</div>
          <div className="sub">
            {(runs.data ?? []).filter((r) => r.status === "completed").length} completed ·{" "}
            {(runs.data ?? []).filter((r) => r.status === "failed").length} failed
          </div>
        </div>
        <div className="panel stat-card">
          <div className="label">Experiments</div>
          <div className="value">{experiments.data?.length ?? "–"}</div>
          <div className="sub">most recently changed first</div>
        </div>
        <div className="panel stat-card">
          <div className="label">Compute used</div>
          <div className="value">{formatDuration((runs.data ?? []).reduce((s, r) => s + (r.actual_duration_s ?? 0), 0))}</div>
          <div className="sub">over the runs listed</div>
        </div>
      </div>
      <div className="grid-2">
        <section className="panel" aria-label="Recent runs">
          <div className="panel-header">
            <h2>Recent runs</h2>
          </div>
          {runs.isPending ? (
            <SkeletonRows rows={4} label="Loading runs" />
          ) : runs.isError ? (
            <ErrorState error={runs.error} onRetry={() => void runs.refetch()} />
          ) : (runs.data ?? []).length === 0 ? (
            <EmptyState title="No runs yet">
              <p>Open an experiment and start a run.</p>
            </EmptyState>
          ) : (
            <table className="table">
              <thead>
                <tr>
                  <th>Run</th>
                  <th>Experiment</th>
                  <th>Status</th>
                  <th className="right">Loss</th>
                  <th className="right">Started</th>
                </tr>
              </thead>
              <tbody>
                {(runs.data ?? []).map((r) => (
                  <tr key={r.id}>
                    <td>
                      <Link to={`/runs/${r.id}`} className="mono">
                        {shortId(r.id)}
                      </Link>
                    </td>
                    <td className="truncate" style={{ maxWidth: 240 }}>
                      {r.experiment_id ? (
                        (names.get(r.experiment_id) ?? <span className="dim">–</span>)
                      ) : (
                        <span className="dim">deleted</span>
                      )}
                    </td>
                    <td>
                      <div className="row">
                        <StatusBadge status={r.status} />
                        {!isTerminal(r.status) ? (
                          <ProgressBar value={r.progress} label={`Run ${shortId(r.id)} progress`} className="mini-progress" />
                        ) : null}
                      </div>
                    </td>
                    <td className="right num">{formatNumber(r.loss, 3)}</td>
                    <td className="right muted">{formatRelative(r.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
        <section className="panel" aria-label="Recent experiments">
          <div className="panel-header">
            <h2>Recent experiments</h2>
            <span className="spacer" />
            <Link to="/experiments" className="btn btn-sm btn-ghost">
              All experiments
            </Link>
          </div>
          {experiments.isPending ? (
            <SkeletonRows rows={4} label="Loading experiments" />
          ) : (experiments.data ?? []).length === 0 ? (
            <EmptyState title="No experiments yet" icon={<FlaskConical />}>
              <Link to="/experiments" className="btn btn-sm">
                Start with the demo experiment
              </Link>
            </EmptyState>
          ) : (
            <table className="table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th className="right">Pairs</th>
                  <th>Last run</th>
                  <th className="right">Updated</th>
                </tr>
              </thead>
              <tbody>
                {(experiments.data ?? []).map((e) => (
                  <tr key={e.id}>
                    <td className="truncate" style={{ maxWidth: 280 }}>
                      <Link to={`/experiments/${e.id}`} className="experiment-link">
                        {e.name}
                      </Link>
                    </td>
                    <td className="right num">{e.training_pairs}</td>
                    <td>{e.last_run ? <StatusBadge status={e.last_run.status} /> : <span className="dim">never run</span>}</td>
                    <td className="right muted">{formatRelative(e.updated_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      </div>
    </div>
  );
}
