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
  const [decayText, setDecayText] = useState("");
  const [requestId, setRequestId] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const progress = live.status === "completed" ? 1 : overallProgress(live.stages);
  const train = live.stages.train;
  const training = train?.status === "running" || train?.status === "checkpointing";
  const mine = requestId ? live.paramChanges.find((p) => p.requestId === requestId) : undefined;
  const shown = mine ?? live.paramChanges[live.paramChanges.length - 1];
  const shownChanges = shown ? Object.entries(shown.changes) : [];
  const eta = !isTerminal(live.status) && train?.etaS != null ? Date.now() + train.etaS * 1000 : null;

  async function apply(event: FormEvent) {
    event.preventDefault();
    const params: { learning_rate?: number; weight_decay?: number } = {};
    if (text.trim()) {
      const rate = parseRate(text);
      if (rate == null) {
        setProblem("the learning rate is a number above 0 and at most 1, e.g. 2e-4");
        return;
      }
      params.learning_rate = rate;
    }
    if (decayText.trim()) {
      const decay = Number(decayText.trim());
      if (!Number.isFinite(decay) || decay < 0 || decay > 1) {
        setProblem("the weight decay is a number from 0 to 1");
        return;
      }
      params.weight_decay = decay;
    }
    setProblem(null);
    try {
      const accepted = await updateParams.mutateAsync(params);
      setRequestId(accepted.request_id);
      setText("");
      setDecayText("");
      toast.show("Change requested; it applies at the next optimizer step.");
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
        <label htmlFor="new-wd" className="muted">
          weight decay
        </label>
        <input
          id="new-wd"
          className="input mono"
          style={{ width: 80 }}
          placeholder="e.g. 0.01"
          inputMode="decimal"
          aria-label="New weight decay"
          value={decayText}
          onChange={(e) => setDecayText(e.target.value)}
          disabled={!training}
        />
        <button type="submit" className="btn btn-sm" disabled={!training || !(text.trim() || decayText.trim()) || updateParams.isPending}>
          Apply
        </button>
        {problem ? (
          <span id="new-lr-error" className="field-error" role="alert">
            {problem}
          </span>
        ) : requestId && !mine ? (
          <span className="dim">waiting for the next step…</span>
        ) : shown && shownChanges.length ? (
          <span className="applied-note" role="status">
            <Check size={12} />{" "}
            {shownChanges
              .map(([name, c]) => `${name === "learning_rate" ? "lr" : "wd"} ${formatLr(c.old)} → ${formatLr(c.new)}`)
              .join(", ")}{" "}
            applied at step {shown.effectiveStep}
          </span>
        ) : null}
      </form>
    </div>
  );
}
