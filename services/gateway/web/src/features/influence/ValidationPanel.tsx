import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { InlineAlert } from "@/components/ui/Feedback";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { describeError } from "@/lib/api/errors";
import { formatCost, formatDuration, formatNumber } from "@/lib/format";
import { methodLabel, useMethods } from "@/lib/methods";
import { queryKeys } from "@/lib/queryKeys";
import "./validation.css";

type Validation = Schemas["ValidationOut"];
type Settings = { subsets: number; alpha: number; removal_k: number };

const ACTIVE = new Set(["queued", "running"]);

export function useValidations(runId: string) {
  return useQuery({
    queryKey: queryKeys.validations(runId),
    queryFn: () => unwrap(api.GET("/api/runs/{run_id}/validations", { params: { path: { run_id: runId } } })),
    // A validation of an ended run outlives the run's event stream: follow it while under way.
    refetchInterval: (query) => (query.state.data?.some((v) => ACTIVE.has(v.status)) ? 1_500 : false),
  });
}

/** Beside the heatmap's method switcher: whether the run's attributions predict retraining
 * (LDS with its 95% interval, removal test), per method and BM25, and the action that
 * checks them, its cost estimate shown before it starts. */
/** One number of the validation's settings, labelled (for screen readers too). */
function NumberSetting({
  label,
  value,
  onChange,
  min,
  max,
  step,
}: {
  label: string;
  value: number;
  onChange: (value: number) => void;
  min: number;
  max?: number;
  step?: number;
}) {
  return (
    <label className="row muted">
      {label}
      <input
        className="input mono validation-number"
        type="number"
        min={min}
        max={max}
        step={step}
        value={value}
        onChange={(e) => onChange(Number(e.target.value))}
        aria-label={label}
      />
    </label>
  );
}

export function ValidationPanel({ runId, method }: { runId: string; method: string | null }) {
  const client = useQueryClient();
  const methods = useMethods();
  const validations = useValidations(runId);
  const [settings, setSettings] = useState<Settings>({ subsets: 32, alpha: 0.5, removal_k: 3 });
  const [asking, setAsking] = useState(false);
  const refresh = () => client.invalidateQueries({ queryKey: queryKeys.validations(runId) });

  const estimate = useMutation({
    mutationFn: (body: Settings) =>
      unwrap(api.POST("/api/runs/{run_id}/validations/estimate", { params: { path: { run_id: runId } }, body }), "No estimate"),
  });
  const start = useMutation({
    mutationFn: (body: Settings) =>
      unwrap(api.POST("/api/runs/{run_id}/validations", { params: { path: { run_id: runId } }, body }), "Could not start the validation"),
    onSuccess: () => {
      setAsking(false);
      estimate.reset();
      void refresh();
    },
  });
  const cancel = useMutation({
    mutationFn: (id: string) =>
      unwrap(
        api.POST("/api/runs/{run_id}/validations/{validation_id}/cancel", { params: { path: { run_id: runId, validation_id: id } } }),
        "Could not cancel",
      ),
    onSuccess: () => void refresh(),
  });

  const latest: Validation | undefined = validations.data?.[0];
  const active = latest && ACTIVE.has(latest.status) ? latest : undefined;
  const shown = validations.data?.find((v) => v.status === "completed");
  const label = (m: string) => (m === "bm25" ? "BM25" : methodLabel(m, methods.data));

  const ask = () => {
    setAsking(true);
    estimate.mutate(settings);
  };
  const change = (patch: Partial<Settings>) => {
    const next = { ...settings, ...patch };
    setSettings(next);
    estimate.mutate(next);
  };

  return (
    <section className="panel validation" aria-label="Validation">
      <div className="panel-header">
        <h2>Validation against retraining</h2>
        <span className="meta">LDS: Spearman ρ of predicted vs retrained loss; 1 predicts, 0 does not</span>
        {!active && !asking ? (
          <button type="button" className="btn btn-sm" onClick={ask}>
            Validate attributions
          </button>
        ) : null}
      </div>
      {asking && !active ? (
        <div className="panel-body validation-ask" role="region" aria-label="Validation estimate">
          <div className="row">
            <NumberSetting label="Subsets" min={2} value={settings.subsets} onChange={(subsets) => change({ subsets })} />
            <NumberSetting label="Alpha" min={0.05} max={0.95} step={0.05} value={settings.alpha} onChange={(alpha) => change({ alpha })} />
            <NumberSetting label="Removal k" min={1} value={settings.removal_k} onChange={(removal_k) => change({ removal_k })} />
          </div>
          {estimate.isError ? <InlineAlert>{describeError(estimate.error)}</InlineAlert> : null}
          {estimate.data ? (
            <p className="mono">
              {estimate.data.retrainings} retrainings ({estimate.data.subsets} subsets, {estimate.data.removals} removals, 1 on every pair)
              of {estimate.data.matrices.length} matrices · about {formatDuration(estimate.data.estimated_duration_s)} on{" "}
              {estimate.data.workers} workers
              {estimate.data.estimated_cost_usd != null ? ` · ${formatCost(estimate.data.estimated_cost_usd)}` : ""}
            </p>
          ) : estimate.isPending ? (
            <p className="dim">Estimating…</p>
          ) : null}
          {start.isError ? <InlineAlert>{describeError(start.error)}</InlineAlert> : null}
          <div className="row">
            <button
              type="button"
              className="btn btn-primary btn-sm"
              disabled={!estimate.data || start.isPending}
              onClick={() => start.mutate(settings)}
            >
              Start validation
            </button>
            <button type="button" className="btn btn-ghost btn-sm" onClick={() => setAsking(false)}>
              Close
            </button>
          </div>
        </div>
      ) : null}
      {active ? (
        <div className="panel-body row">
          <ProgressBar value={active.progress} label="Validation progress" />
          <span className="mono dim" role="status">
            {active.status} · {Math.round(active.progress * 100)}%
          </span>
          <button type="button" className="btn btn-danger btn-sm" onClick={() => cancel.mutate(active.id)} disabled={cancel.isPending}>
            Cancel validation
          </button>
        </div>
      ) : null}
      {latest && (latest.status === "failed" || latest.status === "cancelled") ? (
        <div className="panel-body">
          <InlineAlert tone="warning">
            The last validation {latest.status}
            {latest.error ? `: ${latest.error}` : ""}
          </InlineAlert>
        </div>
      ) : null}
      {shown ? (
        <table className="table table-dense" aria-label="Validation results">
          <thead>
            <tr>
              <th>Method</th>
              <th>Variant</th>
              <th className="right">LDS</th>
              <th className="right">95% interval</th>
              <th className="right" title="mean loss after removing each question's top-k pairs minus after removing k random ones">
                Removal − random
              </th>
              <th className="right" title="share of questions where removing the top-k raised the loss more than random">
                Top-k wins
              </th>
            </tr>
          </thead>
          <tbody>
            {shown.results.map((r) => (
              <tr key={`${r.method}/${r.variant}`} className={r.method === method ? "current" : undefined}>
                <td>{label(r.method)}</td>
                <td className="mono">{r.variant}</td>
                <td className="right mono">{formatNumber(r.lds, 3)}</td>
                <td className="right mono">
                  [{formatNumber(r.lds_low, 2)}, {formatNumber(r.lds_high, 2)}]
                </td>
                <td className="right mono">{formatNumber(r.removal_over_random, 4)}</td>
                <td className="right mono">{r.removal_win_rate == null ? "–" : `${Math.round(r.removal_win_rate * 100)}%`}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : !active && !asking ? (
        <p className="panel-body dim">
          Not validated yet: retrains the run on random subsets of its training pairs and without each question's top pairs, and checks
          which method predicted the losses best.
        </p>
      ) : null}
    </section>
  );
}
