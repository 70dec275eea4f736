import { Copy, Square } from "lucide-react";
import { useEffect, useState } from "react";
import { Link, useNavigate } from "react-router";
import { ConfirmDialog } from "@/components/ui/ConfirmDialog";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { useToast } from "@/components/ui/Toasts";
import { describeError } from "@/lib/api/errors";
import { formatCost, formatElapsed, formatTime, shortId } from "@/lib/format";
import { isTerminal } from "@/lib/runStatus";
import { useRunControl, type Run } from "./api";
import type { LiveRun } from "./liveState";

function useNow(active: boolean): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!active) return;
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [active]);
  return now;
}

function activeStage(live: LiveRun): string | undefined {
  const running = Object.values(live.stages).find((s) => s.status === "running" || s.status === "checkpointing");
  return running?.key.replace("influence.", "influence ");
}

/** The run's name, status, key facts and its actions (clone the config, cancel). */
export function RunHeader({ run, live, experimentName }: { run: Run; live: LiveRun; experimentName: string | null }) {
  const ended = isTerminal(live.status);
  const now = useNow(!ended);
  const navigate = useNavigate();
  const toast = useToast();
  const { cancel } = useRunControl(run.id);
  const started = run.started_at ? new Date(run.started_at).getTime() : null;
  const finished = run.finished_at ? new Date(run.finished_at).getTime() : null;
  const elapsed = started ? ((finished ?? (ended ? started : now)) - started) / 1000 : null;
  const price = run.estimate?.price_per_hour_usd;
  const cost = run.actual_cost_usd ?? (price != null && elapsed != null ? (elapsed / 3600) * price * (run.estimate?.gpu_count ?? 1) : null);
  const h = run.config.hyperparams;
  const quant = h?.quantization === "4bit" ? "QLoRA" : "LoRA";

  return (
    <div className="run-header">
      <h1>
        {run.experiment_id && experimentName ? (
          <Link to={`/experiments/${run.experiment_id}`} style={{ color: "inherit" }}>
            {experimentName}
          </Link>
        ) : (
          <span>{experimentName ?? "Run"}</span>
        )}
        <span className="run-id">/ run {shortId(run.id)}</span>
      </h1>
      <span role="status" aria-label="Run status" aria-live="polite">
        <StatusBadge status={live.status} suffix={live.status === "running" ? activeStage(live) : undefined} />
      </span>
      <div className="run-facts">
        <span className="mono">{run.config.model_id.split("/").pop()}</span>
        <span className="sep">·</span>
        <span>
          {quant} r{h?.lora_rank} · {h?.num_epochs} epochs · {run.config.training_data.length} pairs
        </span>
        <span className="sep">·</span>
        <span>
          {run.started_at ? (
            <>
              started <span className="mono">{formatTime(run.started_at)}</span>
            </>
          ) : (
            <>queued {formatTime(run.created_at)}</>
          )}
        </span>
        <span className="sep">·</span>
        <span>
          {ended ? "duration" : "elapsed"} <span className="mono">{formatElapsed(elapsed)}</span>
        </span>
        <span className="sep">·</span>
        <span className="mono">{formatCost(cost)}</span>
        <span>{ended ? "" : "so far"}</span>
      </div>
      <div className="actions">
        {run.experiment_id ? (
          <button type="button" className="btn btn-sm" onClick={() => navigate(`/experiments/${run.experiment_id}`)}>
            <Copy /> Open experiment
          </button>
        ) : null}
        {!ended ? (
          <ConfirmDialog
            trigger={
              <button type="button" className="btn btn-sm btn-danger">
                <Square /> Cancel run
              </button>
            }
            title="Cancel this run?"
            description="Training stops at its next step; stages that have not started will not run. Results already computed are kept."
            confirmLabel="Yes, cancel the run"
            cancelLabel="Keep running"
            onConfirm={async () => {
              try {
                await cancel.mutateAsync();
                toast.show("Cancel requested.");
              } catch (e) {
                toast.show(describeError(e), "error");
                throw e;
              }
            }}
          />
        ) : null}
      </div>
    </div>
  );
}
