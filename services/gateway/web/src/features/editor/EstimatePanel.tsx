import { useQuery } from "@tanstack/react-query";
import { Cpu } from "lucide-react";
import { useEffect, useState, type ReactNode } from "react";
import { api, unwrap } from "@/lib/api/client";
import { describeError } from "@/lib/api/errors";
import { formatCost, formatDuration } from "@/lib/format";
import { queryKeys } from "@/lib/queryKeys";
import { toBody, type Draft } from "./draft";

function useDebouncedValue<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = window.setTimeout(() => setV(value), ms);
    return () => window.clearTimeout(t);
  }, [value, ms]);
  return v;
}

/** What the estimate depends on: the model, the training pairs and the hyperparameters. */
function estimateBody(draft: Draft) {
  const body = toBody(draft);
  // Only complete pairs count: a half-typed row is not refused here (the editor marks it).
  const complete = body.training_data.filter((p) => p.question.trim() && p.answer.trim());
  return { model_id: body.model_id, training_data: complete, hyperparams: body.hyperparams };
}

export function useEstimate(draft: Draft) {
  const body = useDebouncedValue(estimateBody(draft), 400);
  const key = JSON.stringify(body);
  return useQuery({
    queryKey: queryKeys.estimate({ key }),
    queryFn: () => unwrap(api.POST("/api/estimates", { body }), "No estimate"),
    enabled: body.training_data.length > 0,
    placeholderData: (previous) => previous,
    staleTime: 60_000,
    retry: false,
  });
}

/** Tier, device, memory, duration and cost of the run the editor describes, refreshed as
 * the settings change; and the button that starts it. */
export function EstimatePanel({ draft, startButton }: { draft: Draft; startButton: ReactNode }) {
  const estimate = useEstimate(draft);
  const e = estimate.data;
  const memory = e ? (e.quantization === "4bit" ? e.memory_gb.qlora : e.memory_gb.lora) : null;
  const capacity = e?.gpu === "cpu" ? null : 24;
  return (
    <section className="panel estimate" aria-label="Estimate">
      <div className="panel-header">
        <h2>Estimate</h2>
        <span className="spacer" />
        <span className="dim" style={{ fontSize: "var(--text-xs)" }}>
          {estimate.isFetching ? "updating…" : "updates live"}
        </span>
      </div>
      <div className="panel-body col" style={{ gap: 10 }}>
        {estimate.isError ? (
          <span className="field-error" role="alert">
            {describeError(estimate.error)}
          </span>
        ) : null}
        <div className="estimate-row">
          <span className="muted">Device</span>
          <span className="mono">
            <Cpu size={12} /> {e ? (e.gpu === "cpu" ? "CPU" : `${e.gpu_count} × ${e.gpu}`) : "–"}
          </span>
        </div>
        <div className="estimate-row">
          <span className="muted">Tier</span>
          <span className="mono">{e?.tier ?? "–"}</span>
        </div>
        <div className="estimate-row">
          <span className="muted">Peak memory</span>
          <span className="mono">{e && memory != null ? `${memory.toFixed(1)} GB` : "–"}</span>
        </div>
        {e ? (
          <div className="estimate-row dim" style={{ marginTop: -6 }}>
            <span>LoRA / QLoRA</span>
            <span className="mono">
              {e.memory_gb.lora.toFixed(1)} / {e.memory_gb.qlora.toFixed(1)} GB
            </span>
          </div>
        ) : null}
        {e && capacity && memory != null ? (
          <div className="progress" aria-hidden="true">
            <span style={{ width: `${Math.min((memory / capacity) * 100, 100)}%` }} />
          </div>
        ) : null}
        <div className="estimate-big">
          <div>
            <div className="muted">Duration</div>
            <div className="big mono">{e ? `~${formatDuration(e.estimated_duration_s)}` : "–"}</div>
          </div>
          <div>
            <div className="muted">Cost</div>
            <div className="big mono cost">{e ? formatCost(e.estimated_cost_usd) : "–"}</div>
          </div>
        </div>
        {e ? (
          <div className="dim" style={{ fontSize: "var(--text-xs)" }} title={e.assumptions.join("\n")}>
            {e.training_tokens.toLocaleString()} training tokens at ~{Math.round(e.tokens_per_s)} tokens/s · training only
          </div>
        ) : null}
        {startButton}
      </div>
    </section>
  );
}
