import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { useTheme } from "@/lib/theme";
import "./charts.css";

export interface ChartSeries {
  label: string;
  /** One value per x; null leaves a gap. */
  values: readonly (number | null)[];
  /** A CSS colour or a `var(--token)`. */
  color: string;
  /** Fill under the line (the main series of a chart). */
  fill?: boolean;
  /** Drawn thinner and fainter (e.g. the raw values beside a smoothed line). */
  faint?: boolean;
}

export interface ChartMarker {
  x: number;
  label: string;
  /** "checkpoint" draws a dashed grey line, "change" a solid amber one. */
  kind: "checkpoint" | "change";
}

export interface LineChartProps {
  /** Sorted x values (optimizer steps), one per point. */
  x: readonly number[];
  series: ChartSeries[];
  markers?: ChartMarker[];
  height?: number;
  /** Upper end of the x axis (e.g. the run's total steps) so the chart shows what is left. */
  xMax?: number | null;
  yMin?: number;
  logY?: boolean;
  formatY?: (value: number) => string;
}

function cssColor(color: string, root: HTMLElement): string {
  const match = /^var\((--[\w-]+)\)$/.exec(color);
  return match ? getComputedStyle(root).getPropertyValue(match[1]!).trim() || "#888" : color;
}

function withAlpha(color: string, alpha: number): string {
  if (color.startsWith("#") && color.length === 7) {
    const a = Math.round(alpha * 255)
      .toString(16)
      .padStart(2, "0");
    return `${color}${a}`;
  }
  return color;
}

/** The y range: from zero (or `floor`), with headroom; a constant series (a fixed
 * learning rate) sits in the middle rather than on the axis. */
export function yRange(min: number | null, max: number | null, floor?: number): [number, number] {
  if (min == null || max == null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  const low = floor ?? Math.min(min, 0);
  if (max <= low) return [low, low + 1];
  if (max === min) return [low, max + Math.abs(max) * 0.6];
  return [low, max + (max - low) * 0.08];
}

/** The y axis's width in CSS pixels: its longest tick label, measured in the axis font,
 * plus the gap uPlot leaves between labels and plot (at least the old fixed 46). */
function axisWidth(u: uPlot, values: string[] | null): number {
  if (!values?.length) return 46;
  const ctx = u.ctx;
  ctx.save();
  ctx.font = `${11 * devicePixelRatio}px "JetBrains Mono", monospace`;
  const widest = Math.max(...values.map((v) => ctx.measureText(String(v)).width)) / devicePixelRatio;
  ctx.restore();
  return Math.max(46, Math.ceil(widest) + 14);
}

/** Vertical marker lines with a small label at the top. */
function markerPlugin(markers: () => ChartMarker[], colors: () => { checkpoint: string; change: string; text: string }): uPlot.Plugin {
  return {
    hooks: {
      draw: [
        (u) => {
          const ctx = u.ctx;
          const { top, height, left, width } = u.bbox;
          const palette = colors();
          ctx.save();
          ctx.font = `${10 * devicePixelRatio}px "JetBrains Mono", monospace`;
          ctx.textBaseline = "top";
          // uPlot leaves the context right-aligned after drawing the y axis: without this a
          // label ends at its anchor instead of starting there, and runs over the axis.
          ctx.textAlign = "left";
          // Labels that would overlap the previous one are left out (the line stays).
          let freeFrom = -Infinity;
          for (const m of [...markers()].sort((a, b) => a.x - b.x)) {
            const px = Math.round(u.valToPos(m.x, "x", true));
            if (px < left || px > left + width) continue;
            const color = m.kind === "change" ? palette.change : palette.checkpoint;
            ctx.strokeStyle = color;
            ctx.lineWidth = (m.kind === "change" ? 1.5 : 1) * devicePixelRatio;
            ctx.setLineDash(m.kind === "change" ? [] : [4 * devicePixelRatio, 3 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(px + 0.5, top);
            ctx.lineTo(px + 0.5, top + height);
            ctx.stroke();
            ctx.fillStyle = m.kind === "change" ? palette.change : palette.text;
            const textWidth = ctx.measureText(m.label).width;
            const tx =
              px + 4 * devicePixelRatio + textWidth > left + width ? px - 4 * devicePixelRatio - textWidth : px + 4 * devicePixelRatio;
            if (tx < freeFrom) continue;
            ctx.fillText(m.label, tx, top + 2 * devicePixelRatio);
            freeFrom = tx + textWidth + 6 * devicePixelRatio;
          }
          ctx.restore();
        },
      ],
    },
  };
}

/** A time series drawn by uPlot on a canvas: the whole run, tens of thousands of points,
 * without lag. Fed plain arrays (a data frame), so it knows nothing of runs or the API. */
export function LineChart({ x, series, markers = [], height = 150, xMax, yMin, logY = false, formatY }: LineChartProps) {
  const holder = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const markerRef = useRef(markers);
  markerRef.current = markers;
  const { theme } = useTheme();
  const seriesKey = series.map((s) => `${s.label}:${s.color}:${s.fill ? 1 : 0}:${s.faint ? 1 : 0}`).join("|");

  // (Re)build when the shape or theme changes; data updates below are cheap setData calls.
  useEffect(() => {
    const root = holder.current;
    if (!root) return;
    const rootStyle = document.documentElement;
    const axis = cssColor("var(--chart-axis)", rootStyle);
    const grid = cssColor("var(--chart-grid)", rootStyle);
    const palette = () => ({
      checkpoint: cssColor("var(--text-dim)", rootStyle),
      change: cssColor("var(--warning)", rootStyle),
      text: cssColor("var(--text-muted)", rootStyle),
    });
    const axisFont = `11px "JetBrains Mono", monospace`;
    const opts: uPlot.Options = {
      width: Math.max(root.clientWidth, 120),
      height,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: true }, points: { size: 6 } },
      scales: {
        x: { time: false, range: (_u, min, max) => [Math.min(min, 0), Math.max(max, xMax ?? max)] },
        y: logY ? { distr: 3 } : { range: (_u, min, max) => yRange(min, max, yMin) },
      },
      axes: [
        { stroke: axis, font: axisFont, grid: { stroke: grid, width: 1 }, ticks: { show: false }, size: 24 },
        {
          stroke: axis,
          font: axisFont,
          grid: { stroke: grid, width: 1 },
          ticks: { show: false },
          // As wide as its longest label: a fixed width let long ones ("2.0e-4") run into
          // the plot, under the first marker's label.
          size: (u, values) => axisWidth(u, values),
          values: formatY ? (_u, splits) => splits.map((v) => formatY(v)) : undefined,
        },
      ],
      series: [
        {},
        ...series.map((s) => {
          const stroke = cssColor(s.color, rootStyle);
          return {
            label: s.label,
            stroke: s.faint ? withAlpha(stroke, 0.35) : stroke,
            width: s.faint ? 1 : 1.75,
            fill: s.fill ? withAlpha(stroke, 0.12) : undefined,
            points: { show: false },
            spanGaps: false,
          } satisfies uPlot.Series;
        }),
      ],
      plugins: [markerPlugin(() => markerRef.current, palette)],
    };
    const data: uPlot.AlignedData = [x as number[], ...series.map((s) => s.values as (number | null)[])];
    const chart = new uPlot(opts, data, root);
    plot.current = chart;
    const resize = new ResizeObserver(() => chart.setSize({ width: Math.max(root.clientWidth, 120), height }));
    resize.observe(root);
    return () => {
      resize.disconnect();
      chart.destroy();
      plot.current = null;
    };
    // Rebuilt only when what the chart is changes; data flows through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [seriesKey, theme, height, logY, xMax, yMin]);

  useEffect(() => {
    plot.current?.setData([x as number[], ...series.map((s) => s.values as (number | null)[])]);
  }, [x, series]);

  useEffect(() => {
    plot.current?.redraw(false, false);
  }, [markers]);

  return <div ref={holder} className="line-chart" />;
}
