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

interface Chart {
  title: string;
  sub: string;
  /** The name in the screen-reader summary. */
  name: string;
  /** The headline series: its latest value is shown and summarised. */
  values: readonly (number | null)[];
  color: string;
  series: ChartSeries[];
  /** For the latest value and the y axis; three significant digits otherwise. */
  format?: (v: number | null) => string;
}

interface ChartCardProps extends Chart {
  x: readonly number[];
  markers: ChartMarker[];
  xMax: number | null;
}

function ChartCard({ title, sub, name, values, color, series, format, x, markers, xMax }: ChartCardProps) {
  const summary = x.length ? `${name}: ${x.length} steps, latest ${formatNumber(lastValue(values), 4)}.` : `${name}: no steps yet.`;
  return (
    <figure className="panel chart-card" aria-label={`${title} chart`}>
      <figcaption>
        <span className="title">{title}</span>
        <span className="sub">{sub}</span>
        <span className="value" style={{ color }}>
          {format ? format(lastValue(values)) : formatNumber(lastValue(values), 3)}
        </span>
      </figcaption>
      {x.length === 0 ? (
        <div className="chart-empty" style={{ height: 150 }}>
          waiting for the first step
        </div>
      ) : (
        <LineChart x={x} series={series} markers={markers} xMax={xMax} formatY={format} />
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
  const charts: Chart[] = [
    {
      title: "Loss",
      sub: "train · EMA 0.3",
      name: "Loss",
      values: m.loss,
      color: "var(--accent-text)",
      series: [
        { label: "loss", values: m.loss, color: "var(--accent)", faint: true },
        { label: "loss (EMA)", values: smoothed, color: "var(--accent)", fill: true },
      ],
    },
    {
      title: "Learning rate",
      sub: "as applied",
      name: "Learning rate",
      values: m.learningRate,
      color: "#a5b4fc",
      series: [{ label: "learning rate", values: m.learningRate, color: "#818cf8" }],
      format: formatLr,
    },
    {
      title: "Grad norm",
      sub: "pre-clip",
      name: "Gradient norm",
      values: m.gradNorm,
      color: "var(--success-text)",
      series: [{ label: "grad norm", values: m.gradNorm, color: "var(--success)", fill: true }],
    },
    {
      title: "Tokens / s",
      sub: "forward + backward",
      name: "Tokens per second",
      values: m.tokensPerS,
      color: "#67e8f9",
      series: [{ label: "tokens/s", values: m.tokensPerS, color: "#22d3ee" }],
    },
  ];

  return (
    <div className="charts-grid">
      {charts.map((chart) => (
        <ChartCard key={chart.title} {...chart} x={m.step} markers={markers} xMax={totalSteps} />
      ))}
    </div>
  );
}
