import { formatCost, formatDateTime, formatDuration, formatLr, shortId } from "@/lib/format";
import type { Run } from "./api";
import type { LiveRun } from "./liveState";

/** What the run is: its configuration snapshot, estimate and where its checkpoints are. */
export function RunDetails({ run, live }: { run: Run; live: LiveRun }) {
  const h = run.config.hyperparams;
  const last = live.checkpoints[live.checkpoints.length - 1];
  const estimate = run.estimate;
  return (
    <section className="panel" aria-label="Run details">
      <div className="panel-header">
        <h2>Run details</h2>
        <span className="spacer" />
        <span className="dim mono" title={run.id}>
          run_{shortId(run.id)}
        </span>
      </div>
      <dl className="panel-body details-list">
        <dt>Model</dt>
        <dd>{run.config.model_id}</dd>
        <dt>Config</dt>
        <dd>
          lr {formatLr(h?.learning_rate)} · bs {h?.batch_size} · r {h?.lora_rank} · α {h?.lora_alpha} · {h?.num_epochs} ep
          {h?.quantization === "4bit" ? " · QLoRA" : ""}
        </dd>
        <dt>Schedule</dt>
        <dd>
          {h?.lr_scheduler} · warmup {h?.warmup_ratio} · wd {h?.weight_decay}
        </dd>
        <dt>Data</dt>
        <dd>
          {run.config.training_data.length} pairs · {run.config.eval_data.length} eval
        </dd>
        <dt>Methods</dt>
        <dd>{run.config.influence_methods.join(", ")}</dd>
        <dt>Checkpoint</dt>
        <dd title={last?.key}>{last ? `e${last.epoch} · step ${last.step} · …/${last.key.split("/").slice(-2).join("/")}` : "–"}</dd>
        <dt>Estimate</dt>
        <dd>
          {estimate
            ? `${estimate.gpu} · ${formatDuration(estimate.estimated_duration_s)} · ${formatCost(estimate.estimated_cost_usd)}`
            : "–"}
        </dd>
        <dt>Actual</dt>
        <dd>{run.actual_duration_s != null ? `${formatDuration(run.actual_duration_s)} · ${formatCost(run.actual_cost_usd)}` : "–"}</dd>
        <dt>Created</dt>
        <dd>{formatDateTime(run.created_at)}</dd>
      </dl>
    </section>
  );
}
