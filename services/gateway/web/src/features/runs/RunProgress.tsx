import { Check } from "lucide-react";
import { useState, type FormEvent } from "react";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { useToast } from "@/components/ui/Toasts";
import { describeError } from "@/lib/api/errors";
import { formatLr, formatTime } from "@/lib/format";
import { isTerminal } from "@/lib/runStatus";
import { useRunControl } from "./api";
import { overallProgress, type LiveRun } from "./liveState";

function parseRate(text: string): number | null {
  const value = Number(text.trim());
  return Number.isFinite(value) && value > 0 && value <= 1 ? value : null;
}

/** The whole run's progress, and the one thing a researcher may change mid-run. */
export function RunProgress({ live, runId }: { live: LiveRun; runId: string }) {
  const { updateParams } = useRunControl(runId);
  const toast = useToast();
  const [text, setText] = useState("");
  const [requestId, setRequestId] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const progress = live.status === "completed" ? 1 : overallProgress(live.stages);
  const train = live.stages.train;
  const training = train?.status === "running" || train?.status === "checkpointing";
  const mine = requestId ? live.paramChanges.find((p) => p.requestId === requestId) : undefined;
  const shown = mine ?? live.paramChanges[live.paramChanges.length - 1];
  const lrChange = shown?.changes.learning_rate;
  const eta = !isTerminal(live.status) && train?.etaS != null ? Date.now() + train.etaS * 1000 : null;

  async function apply(event: FormEvent) {
    event.preventDefault();
    const rate = parseRate(text);
    if (rate == null) {
      setProblem("a number above 0 and at most 1, e.g. 2e-4");
      return;
    }
    setProblem(null);
    try {
      const accepted = await updateParams.mutateAsync({ learning_rate: rate });
      setRequestId(accepted.request_id);
      setText("");
      toast.show(`Learning rate ${formatLr(rate)} requested; it applies at the next optimizer step.`);
    } catch (e) {
      setProblem(describeError(e));
    }
  }

  return (
    <div className="run-progress-row">
      <span className="muted">Run progress</span>
      <ProgressBar
        value={progress}
        label="Run progress"
        tone={live.status === "failed" ? "error" : live.status === "completed" ? "success" : "accent"}
      />
      <span className="percent">{Math.round(progress * 100)}%</span>
      {eta ? <span className="dim">training done ≈ {formatTime(new Date(eta).toISOString())}</span> : null}
      <span className="divider" />
      <form className="lr-control" onSubmit={apply}>
        <label htmlFor="new-lr" className="muted">
          New learning rate
        </label>
        <input
          id="new-lr"
          className="input mono"
          placeholder="e.g. 2e-4"
          inputMode="decimal"
          value={text}
          onChange={(e) => setText(e.target.value)}
          disabled={!training}
          aria-invalid={Boolean(problem)}
          aria-describedby={problem ? "new-lr-error" : undefined}
        />
        <button type="submit" className="btn btn-sm" disabled={!training || !text.trim() || updateParams.isPending}>
          Apply
        </button>
        {problem ? (
          <span id="new-lr-error" className="field-error" role="alert">
            {problem}
          </span>
        ) : requestId && !mine ? (
          <span className="dim">waiting for the next step…</span>
        ) : shown && lrChange ? (
          <span className="applied-note" role="status">
            <Check size={12} /> lr {formatLr(lrChange.old)} → {formatLr(lrChange.new)} applied at step {shown.effectiveStep}
          </span>
        ) : null}
      </form>
    </div>
  );
}
