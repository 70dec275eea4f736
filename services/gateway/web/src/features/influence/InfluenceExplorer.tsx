import { DropdownMenu } from "radix-ui";
import { Segmented } from "@/components/ui/Segmented";
import { Select, type SelectOption } from "@/components/ui/Select";
import { Download, Link2, Maximize2, Minimize2, Search } from "lucide-react";
import { useEffect, useMemo, useRef, useState } from "react";
import { Heatmap, type CellRef } from "@/components/charts/Heatmap";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { useToast } from "@/components/ui/Toasts";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { formatNumber, formatSigned, shortId } from "@/lib/format";
import { methodLabel, useMethods } from "@/lib/methods";
import { useQuery } from "@tanstack/react-query";
import { queryKeys } from "@/lib/queryKeys";
import { DetailsPanel } from "./DetailsPanel";
import { download, heatmapSvg, matrixCsv, matrixJson, type Texts } from "./exports";
import {
  colOrder as orderCols,
  colTotals,
  frameOf,
  pixels,
  ranksInRow,
  rowOf,
  rowOrder as orderRows,
  rowSaturations,
  rowTotals,
  COLOR_LUT,
  type Frame,
  type ColOrder,
  type RowOrder,
} from "./matrix";
import { SummaryPanels } from "./SummaryPanels";
import { defaultView } from "./defaultView";
import { useValidations, ValidationPanel } from "./ValidationPanel";
import { useExplorerView } from "./useExplorerView";
import "./influence.css";

type Run = Schemas["RunOut"];
type Matrix = Schemas["InfluenceMatrixOut"];

const VARIANT_LABEL: Record<string, string> = { raw: "Raw", normalized: "Normalised" };
const ROW_ORDERS: SelectOption<RowOrder>[] = [
  { value: "input", label: "evaluation order" },
  { value: "total", label: "total influence" },
];
const COLUMN_ORDERS: SelectOption<ColOrder>[] = [
  { value: "input", label: "training order" },
  { value: "total", label: "total influence" },
  { value: "cluster", label: "cluster order" },
];

/** A run's matrices, read once and kept: the explorer, the answers and the comparison
 * share the one copy (large ones come from the object store through the results API). */
function useResults(runId: string) {
  return useQuery({
    queryKey: queryKeys.runResults(runId),
    queryFn: () => unwrap(api.GET("/api/runs/{run_id}/results", { params: { path: { run_id: runId } } })),
    staleTime: 5 * 60_000,
  });
}

function Legend({ sat, mode, stats }: { sat: number; mode: "shared" | "row"; stats: { min: number; max: number; cells: number } }) {
  const gradient = useMemo(() => {
    const stops = [0, 32, 64, 96, 128, 160, 192, 224, 256].map(
      (i) => `rgb(${COLOR_LUT[i * 3]},${COLOR_LUT[i * 3 + 1]},${COLOR_LUT[i * 3 + 2]})`,
    );
    return `linear-gradient(90deg, ${stops.join(",")})`;
  }, []);
  return (
    <div className="heat-legend" aria-label="Colour scale">
      <span className="muted">Score</span>
      <div className="legend-scale">
        <div className="legend-bar" style={{ background: gradient }} />
        <div className="legend-ticks mono">
          {mode === "shared" ? (
            <>
              <span>{formatSigned(-sat, 2)}</span>
              <span>0</span>
              <span>{formatSigned(sat, 2)}</span>
            </>
          ) : (
            <>
              <span>−row max</span>
              <span>0</span>
              <span>+row max</span>
            </>
          )}
        </div>
      </div>
      <div className="legend-keys">
        <span>
          <span className="dot neg" /> negative · raised the reference's loss
        </span>
        <span>
          <span className="dot pos" /> positive · lowered it
        </span>
      </div>
      <span className="grow" />
      <span className="dim mono legend-stats">
        {stats.cells.toLocaleString()} cells · min {formatNumber(stats.min, 3)} · max {formatNumber(stats.max, 3)}
        {mode === "shared" ? ` · colour clipped at ±${formatNumber(sat, 2)}` : " · each row scaled to its own max"}
      </span>
    </div>
  );
}

/** The influence explorer: which training pairs drove which answers. */
export function InfluenceExplorer({ run }: { run: Run }) {
  const results = useResults(run.id);
  const methods = useMethods();
  const [view, setView] = useExplorerView();
  const [detailsOpen, setDetailsOpen] = useState(true);
  const [full, setFull] = useState(false);
  const root = useRef<HTMLDivElement>(null);
  const toast = useToast();

  const matrices: Matrix[] = useMemo(() => results.data?.influence ?? [], [results.data]);
  // In the run's own order (TracIn, DataInf, EK-FAC as chosen), not the API's alphabetical one.
  const methodIds = useMemo(() => {
    const present = new Set(matrices.map((m) => m.method));
    const ordered = (run.config.influence_methods ?? []).filter((m) => present.has(m));
    return [...ordered, ...[...present].filter((m) => !ordered.includes(m))];
  }, [matrices, run.config.influence_methods]);
  // Without a method in the URL: the evidence's choice (the run's own validation, else the
  // benchmark workload's LDS ranking; defaultView.ts).
  const validations = useValidations(run.id);
  const preferred = useMemo(
    () =>
      defaultView(
        matrices.map((m) => ({ method: m.method, variant: m.variant })),
        methodIds,
        validations.data?.find((v) => v.status === "completed")?.results ?? null,
      ),
    [matrices, methodIds, validations.data],
  );
  const method = view.method && methodIds.includes(view.method) ? view.method : (preferred?.method ?? null);
  // Plain strings: the view's variant comes from the URL and is checked against these.
  const variants = useMemo(() => matrices.filter((m) => m.method === method).map((m): string => m.variant), [matrices, method]);
  const variant =
    view.variant && variants.includes(view.variant)
      ? view.variant
      : !view.method && preferred && variants.includes(preferred.variant)
        ? preferred.variant
        : variants.includes("normalized")
          ? "normalized"
          : (variants[0] ?? null);
  const matrix = matrices.find((m) => m.method === method && m.variant === variant) ?? null;

  const evalTexts = useMemo(
    () => new Map<string, Texts>(run.config.eval_data.map((e) => [e.id, { question: e.question, answer: e.answer ?? null }])),
    [run],
  );
  const trainTexts = useMemo(
    () => new Map<string, Texts>(run.config.training_data.map((t) => [t.id, { question: t.question, answer: t.answer }])),
    [run],
  );
  const answers = useMemo(
    () =>
      new Map(
        (results.data?.answers ?? []).map((a) => [
          a.eval_id,
          { base: a.base, few_shot: a.few_shot, fine_tuned: a.fine_tuned, reference: a.reference ?? null },
        ]),
      ),
    [results.data],
  );

  const frame: Frame | null = useMemo(() => (matrix ? frameOf(matrix.scores, matrix.eval_ids, matrix.train_ids) : null), [matrix]);
  // The same variant of every other method, and the BM25 baseline, for ranks and agreement.
  const others = useMemo(
    () =>
      matrices
        .filter((m) => m.method !== method && m.variant === variant)
        .map((m) => ({ label: methodLabel(m.method, methods.data), method: m.method, frame: frameOf(m.scores, m.eval_ids, m.train_ids) })),
    [matrices, method, variant, methods.data],
  );
  const bm25 = useMemo(() => {
    const baselines = results.data?.baselines ?? [];
    const b = baselines.find((m) => m.variant === "question_reference") ?? baselines[0];
    return b ? frameOf(b.scores, b.eval_ids, b.train_ids) : null;
  }, [results.data]);

  const rowIdx = useMemo(() => (frame ? orderRows(frame, view.rows) : []), [frame, view.rows]);
  const colIdx = useMemo(() => (frame ? orderCols(frame, view.cols) : []), [frame, view.cols]);
  const sats = useMemo(() => (frame ? rowSaturations(frame, view.scale) : new Float64Array()), [frame, view.scale]);
  const image = useMemo(() => (frame ? pixels(frame, rowIdx, colIdx, sats) : new Uint8ClampedArray()), [frame, rowIdx, colIdx, sats]);
  const rowSum = useMemo(() => {
    if (!frame) return new Float64Array();
    const t = rowTotals(frame);
    return Float64Array.from(rowIdx, (r) => t[r]!);
  }, [frame, rowIdx]);
  const colSum = useMemo(() => {
    if (!frame) return new Float64Array();
    const t = colTotals(frame);
    return Float64Array.from(colIdx, (c) => t[c]!);
  }, [frame, colIdx]);
  const colMask = useMemo(() => {
    const q = view.filter.trim().toLowerCase();
    if (!frame || !q) return null;
    return Uint8Array.from(colIdx, (c) => {
      const t = trainTexts.get(frame.colIds[c]!);
      return `${frame.colIds[c]} ${t?.question ?? ""} ${t?.answer ?? ""}`.toLowerCase().includes(q) ? 1 : 0;
    });
  }, [frame, colIdx, view.filter, trainTexts]);
  const stats = useMemo(() => {
    if (!frame) return { min: 0, max: 0, cells: 0 };
    let min = Infinity;
    let max = -Infinity;
    frame.values.forEach((v) => {
      if (Number.isFinite(v)) {
        min = Math.min(min, v);
        max = Math.max(max, v);
      }
    });
    return { min, max, cells: frame.values.length };
  }, [frame]);

  // The selection lives in the URL by ids; the heatmap works in display positions.
  const selected: CellRef | null = useMemo(() => {
    if (!frame) return null;
    const r = view.evalId ? rowIdx.indexOf(frame.rowIds.indexOf(view.evalId)) : -1;
    const c = view.trainId ? colIdx.indexOf(frame.colIds.indexOf(view.trainId)) : -1;
    if (r < 0) return null;
    return { row: r, col: Math.max(c, 0) };
  }, [frame, rowIdx, colIdx, view.evalId, view.trainId]);
  const selectedRow = selected ? rowIdx[selected.row]! : frame && frame.rows > 0 ? rowIdx[0]! : null;
  const selectedCol = selected && view.trainId ? colIdx[selected.col]! : null;

  useEffect(() => {
    const onChange = () => setFull(document.fullscreenElement === root.current);
    document.addEventListener("fullscreenchange", onChange);
    return () => document.removeEventListener("fullscreenchange", onChange);
  }, []);

  if (results.isPending) return <SkeletonRows rows={10} label="Loading influence" />;
  if (results.isError) return <ErrorState error={results.error} onRetry={() => void results.refetch()} />;
  if (!matrix || !frame) {
    return (
      <EmptyState title="No influence matrix yet">
        <p>The influence stage writes one matrix per method and variant when it completes.</p>
      </EmptyState>
    );
  }

  const label = `${methodLabel(matrix.method, methods.data)} · ${VARIANT_LABEL[matrix.variant] ?? matrix.variant}`;
  const fileBase = `influence-${shortId(run.id)}-${matrix.method}-${matrix.variant}`;
  const select = (cell: CellRef) => setView({ evalId: frame.rowIds[rowIdx[cell.row]!]!, trainId: frame.colIds[colIdx[cell.col]!]! });
  const rowLabel = (r: number) => evalTexts.get(frame.rowIds[r]!)?.question ?? frame.rowIds[r]!;

  const tooltip = (cell: CellRef) => {
    const r = rowIdx[cell.row]!;
    const c = colIdx[cell.col]!;
    const e = frame.rowIds[r]!;
    const t = frame.colIds[c]!;
    const tt = trainTexts.get(t);
    const score = frame.values[r * frame.cols + c]!;
    const rank = ranksInRow(rowOf(frame, r))[c]!;
    const bmRank = (() => {
      if (!bm25) return null;
      const br = bm25.rowIds.indexOf(e);
      const bc = bm25.colIds.indexOf(t);
      return br >= 0 && bc >= 0 ? ranksInRow(rowOf(bm25, br))[bc]! : null;
    })();
    return (
      <div className="tip">
        <div className="tip-line">
          <span className="badge badge-mono">E{r + 1}</span> {rowLabel(r)}
        </div>
        <div className="tip-line">
          <span className="badge badge-mono">T{c + 1}</span> {tt?.question ?? t}
        </div>
        {tt?.answer ? <div className="tip-answer mono">→ {tt.answer.length > 90 ? `${tt.answer.slice(0, 90)}…` : tt.answer}</div> : null}
        <div className="tip-score">
          <span className={`mono big ${score >= 0 ? "pos" : "neg"}`}>{formatSigned(score, 4)}</span>
          <span className="dim">
            rank {rank} / {frame.cols} in row{bmRank != null ? ` · BM25 ${bmRank}` : ""} · {label}
          </span>
        </div>
      </div>
    );
  };

  const describe = (cell: CellRef) => {
    const r = rowIdx[cell.row]!;
    const c = colIdx[cell.col]!;
    return `Evaluation question ${r + 1}, training pair ${c + 1}: ${formatSigned(frame.values[r * frame.cols + c]!, 4)}`;
  };

  function exportPng() {
    const canvas = document.createElement("canvas");
    const scale = Math.max(1, Math.min(16, Math.floor(1600 / colIdx.length)));
    canvas.width = colIdx.length * scale;
    canvas.height = rowIdx.length * Math.max(scale, 4);
    const ctx = canvas.getContext("2d")!;
    const data = new ImageData(image.slice(), colIdx.length, rowIdx.length);
    const off = document.createElement("canvas");
    off.width = colIdx.length;
    off.height = rowIdx.length;
    off.getContext("2d")!.putImageData(data, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
    canvas.toBlob((blob) => blob && download(`${fileBase}.png`, blob, "image/png"), "image/png");
  }

  return (
    <div className={`explorer ${full ? "full" : ""}`} ref={root}>
      <div className="explorer-controls">
        {methodIds.length > 1 ? (
          <div className="row">
            <span className="muted">Method</span>
            <Segmented
              label="Method"
              value={method ?? ""}
              options={methodIds.map((m) => ({ value: m, label: methodLabel(m, methods.data) }))}
              onChange={(m) => setView({ method: m })}
            />
          </div>
        ) : (
          <div className="row" role="radiogroup" aria-label="Method">
            <span className="muted">Method</span>
            <span className="badge badge-info" role="radio" aria-checked="true">
              {methodLabel(method ?? "", methods.data)}
            </span>
          </div>
        )}
        <Segmented
          label="Variant"
          value={variant ?? ""}
          options={["raw", "normalized"].map((v) => ({ value: v, label: VARIANT_LABEL[v]!, disabled: !variants.includes(v) }))}
          onChange={(v) => setView({ variant: v })}
        />
        <span className="divider" />
        <label className="row muted" htmlFor="rows-order">
          Rows
        </label>
        <Select id="rows-order" width={150} value={view.rows} options={ROW_ORDERS} onChange={(rows) => setView({ rows })} />
        <label className="row muted" htmlFor="cols-order">
          Columns
        </label>
        <Select id="cols-order" width={150} value={view.cols} options={COLUMN_ORDERS} onChange={(cols) => setView({ cols })} />
        <Segmented
          label="Scale"
          value={view.scale}
          options={[
            { value: "shared", label: "Shared scale" },
            { value: "row", label: "Per row" },
          ]}
          onChange={(s) => setView({ scale: s })}
        />
        <div className="search-box small">
          <Search />
          <input
            type="search"
            className="input"
            placeholder="Filter training pairs"
            aria-label="Filter training pairs"
            value={view.filter}
            onChange={(e) => setView({ filter: e.target.value })}
          />
        </div>
      </div>

      <ValidationPanel runId={run.id} method={method} />

      <div className={`explorer-main ${detailsOpen && selectedRow != null ? "" : "no-details"}`}>
        <div className="explorer-left">
          <section className="panel heat-panel">
            <div className="panel-header">
              <h2>Influence heatmap</h2>
              <span className="meta grow">
                {frame.rows} evaluation questions × {frame.cols} training pairs · {label}
                {matrix.args && typeof matrix.args === "object" && "checkpoints" in matrix.args
                  ? ` · over ${String((matrix.args as Record<string, unknown>).checkpoints)} checkpoints`
                  : ""}
              </span>
              <DropdownMenu.Root>
                <DropdownMenu.Trigger asChild>
                  <button type="button" className="btn btn-sm">
                    <Download /> Export
                  </button>
                </DropdownMenu.Trigger>
                <DropdownMenu.Portal container={full ? root.current : undefined}>
                  <DropdownMenu.Content className="menu" align="end">
                    <DropdownMenu.Item
                      className="menu-item"
                      onSelect={() => download(`${fileBase}.csv`, matrixCsv(frame, evalTexts, trainTexts, matrix), "text/csv")}
                    >
                      Matrix as CSV
                    </DropdownMenu.Item>
                    <DropdownMenu.Item
                      className="menu-item"
                      onSelect={() =>
                        download(
                          `${fileBase}.json`,
                          matrixJson(frame, evalTexts, trainTexts, { ...matrix, runId: run.id }),
                          "application/json",
                        )
                      }
                    >
                      Matrix as JSON
                    </DropdownMenu.Item>
                    <DropdownMenu.Separator className="menu-separator" />
                    <DropdownMenu.Item className="menu-item" onSelect={exportPng}>
                      Heatmap as PNG
                    </DropdownMenu.Item>
                    <DropdownMenu.Item
                      className="menu-item"
                      onSelect={() =>
                        download(
                          `${fileBase}.svg`,
                          heatmapSvg(
                            frame,
                            rowIdx,
                            colIdx,
                            sats,
                            rowIdx.map((r) => `E${r + 1}`),
                            `${label} · run ${shortId(run.id)}`,
                          ),
                          "image/svg+xml",
                        )
                      }
                    >
                      Heatmap as SVG
                    </DropdownMenu.Item>
                  </DropdownMenu.Content>
                </DropdownMenu.Portal>
              </DropdownMenu.Root>
              <button
                type="button"
                className="btn btn-sm"
                onClick={async () => {
                  const url = new URL(window.location.href);
                  if (!url.searchParams.get("method")) url.searchParams.set("method", matrix.method);
                  if (!url.searchParams.get("variant")) url.searchParams.set("variant", matrix.variant);
                  url.searchParams.set("tab", "influence");
                  try {
                    await navigator.clipboard.writeText(url.toString());
                    toast.show("Link to this view copied.");
                  } catch {
                    toast.show(url.toString());
                  }
                }}
              >
                <Link2 /> Copy link
              </button>
              <button
                type="button"
                className="btn btn-sm"
                onClick={() => {
                  if (document.fullscreenElement) void document.exitFullscreen();
                  else void root.current?.requestFullscreen();
                }}
              >
                {full ? <Minimize2 /> : <Maximize2 />} {full ? "Exit full screen" : "Full screen"}
              </button>
            </div>
            <div className="panel-body">
              <Heatmap
                pixels={image}
                rows={rowIdx.length}
                cols={colIdx.length}
                rowLabels={rowIdx.map((r) => `E${r + 1}  ${rowLabel(r)}`)}
                rowTitles={rowIdx.map((r) => rowLabel(r))}
                colLabels={colIdx.map((c) => String(c + 1))}
                rowBars={rowSum}
                colBars={colSum}
                colMask={colMask}
                selected={selected}
                onSelect={(cell) => {
                  select(cell);
                  setDetailsOpen(true);
                }}
                onOpen={() => {
                  // The cell is already selected (in the URL); opening only shows its details.
                  setDetailsOpen(true);
                  document.getElementById("influence-details")?.scrollIntoView({ block: "nearest" });
                }}
                onRowLabel={() => setDetailsOpen(true)}
                tooltip={tooltip}
                describe={describe}
                label="Influence heatmap"
                height={full ? Math.max(window.innerHeight - 330, 300) : 420}
              />
              <Legend sat={sats[0] ?? 1} mode={view.scale} stats={stats} />
            </div>
          </section>
          <SummaryPanels
            frame={frame}
            label={methodLabel(matrix.method, methods.data)}
            others={others}
            bm25={bm25}
            row={selectedRow}
            trainTexts={trainTexts}
            onPick={(col) => setView({ trainId: frame.colIds[col]!, evalId: frame.rowIds[selectedRow ?? 0]! })}
          />
        </div>
        {detailsOpen && selectedRow != null ? (
          <div id="influence-details" className="details-column">
            <DetailsPanel
              frame={frame}
              row={selectedRow}
              label={label}
              evalTexts={evalTexts}
              trainTexts={trainTexts}
              answers={answers}
              others={others}
              bm25={bm25}
              selectedCol={selectedCol}
              onPick={(col) => setView({ evalId: frame.rowIds[selectedRow]!, trainId: frame.colIds[col]! })}
              onClose={() => setDetailsOpen(false)}
              relevant={run.config.benchmark?.relevant ?? null}
            />
          </div>
        ) : null}
      </div>
    </div>
  );
}
