import { useMemo } from "react";
import { LineChart, type ChartMarker, type ChartSeries } from "@/components/charts/LineChart";
import { formatLr, formatNumber } from "@/lib/format";
import type { LiveRun } from "./liveState";

/** Exponential moving average (the smoothed loss line); gaps stay gaps. */
export function ema(values: readonly (number | null)[], alpha: number): (number | null)[] {
  let last: number | null = null;
  return values.map((v) => {
    if (v == null) return null;
    last = last == null ? v : alpha * v + (1 - alpha) * last;
    return last;
  });
}

function lastValue(values: readonly (number | null)[]): number | null {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i]!;
  return null;
}

interface ChartCardProps {
  title: string;
  sub: string;
  value: string;
  color: string;
  x: readonly number[];
  series: ChartSeries[];
  markers: ChartMarker[];
  xMax: number | null;
  formatY?: (v: number) => string;
  summary: string;
}

function ChartCard({ title, sub, value, color, x, series, markers, xMax, formatY, summary }: ChartCardProps) {
  return (
    <figure className="panel chart-card" aria-label={`${title} chart`}>
      <figcaption>
        <span className="title">{title}</span>
        <span className="sub">{sub}</span>
        <span className="value" style={{ color }}>
          {value}
        </span>
      </figcaption>
      {x.length === 0 ? (
        <div className="chart-empty" style={{ height: 150 }}>
          waiting for the first step
        </div>
      ) : (
        <LineChart x={x} series={series} markers={markers} xMax={xMax} formatY={formatY} />
      )}
      <p className="sr-only">{summary}</p>
    </figure>
  );
}

/** Loss, learning rate, gradient norm and throughput over every step of the run, with
 * checkpoints and runtime changes marked. */
export function TrainingCharts({ live, totalSteps }: { live: LiveRun; totalSteps: number | null }) {
  const m = live.metrics;
  const markers = useMemo<ChartMarker[]>(
    () => [
      ...live.checkpoints.map((c) => ({ x: c.step, label: `ckpt e${c.epoch}`, kind: "checkpoint" as const })),
      ...live.paramChanges.map((p) => ({
        x: p.effectiveStep,
        label: Object.entries(p.changes)
          .map(([name, c]) => `${name === "learning_rate" ? "lr" : name === "weight_decay" ? "wd" : name} → ${formatLr(c.new)}`)
          .join(" "),
        kind: "change" as const,
      })),
    ],
    [live.checkpoints, live.paramChanges],
  );
  const smoothed = useMemo(() => ema(m.loss, 0.3), [m.loss]);
  const steps = m.step.length;
  const summary = (name: string, values: readonly (number | null)[]) =>
    steps ? `${name}: ${steps} steps, latest ${formatNumber(lastValue(values), 4)}.` : `${name}: no steps yet.`;

  return (
    <div className="charts-grid">
      <ChartCard
        title="Loss"
        sub="train · EMA 0.3"
        value={formatNumber(lastValue(m.loss), 3)}
        color="var(--accent-text)"
        x={m.step}
        series={[
          { label: "loss", values: m.loss, color: "var(--accent)", faint: true },
          { label: "loss (EMA)", values: smoothed, color: "var(--accent)", fill: true },
        ]}
        markers={markers}
        xMax={totalSteps}
        summary={summary("Loss", m.loss)}
      />
      <ChartCard
        title="Learning rate"
        sub="as applied"
        value={formatLr(lastValue(m.learningRate))}
        color="#a5b4fc"
        x={m.step}
        series={[{ label: "learning rate", values: m.learningRate, color: "#818cf8" }]}
        markers={markers}
        xMax={totalSteps}
        formatY={formatLr}
        summary={summary("Learning rate", m.learningRate)}
      />
      <ChartCard
        title="Grad norm"
        sub="pre-clip"
        value={formatNumber(lastValue(m.gradNorm), 3)}
        color="var(--success-text)"
        x={m.step}
        series={[{ label: "grad norm", values: m.gradNorm, color: "var(--success)", fill: true }]}
        markers={markers}
        xMax={totalSteps}
        summary={summary("Gradient norm", m.gradNorm)}
      />
      <ChartCard
        title="Tokens / s"
        sub="forward + backward"
        value={formatNumber(lastValue(m.tokensPerS), 3)}
        color="#67e8f9"
        x={m.step}
        series={[{ label: "tokens/s", values: m.tokensPerS, color: "#22d3ee" }]}
        markers={markers}
        xMax={totalSteps}
        summary={summary("Tokens per second", m.tokensPerS)}
      />
    </div>
  );
}
