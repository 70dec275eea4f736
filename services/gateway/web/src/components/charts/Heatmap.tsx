import { Maximize, Minus, Plus } from "lucide-react";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState, type KeyboardEvent, type ReactNode } from "react";
import "./heatmap.css";

/** A cell by its position in display order (row i of `rowOrder`, column j of `colOrder`). */
export interface CellRef {
  row: number;
  col: number;
}

export interface HeatmapProps {
  /** One RGBA pixel per cell, rows × cols in display order (see matrix.pixels). */
  pixels: Uint8ClampedArray;
  rows: number;
  cols: number;
  /** Short labels in display order. */
  rowLabels: string[];
  rowTitles?: string[];
  colLabels: string[];
  /** Optional bars beside the matrix (display order): Σ per row / per column, signed. */
  rowBars?: Float64Array;
  colBars?: Float64Array;
  /** Columns drawn at full strength; the rest dimmed (a text filter). */
  colMask?: Uint8Array | null;
  selected: CellRef | null;
  onSelect: (cell: CellRef) => void;
  /** Enter on the selected cell (or a double click): open its details. */
  onOpen?: (cell: CellRef) => void;
  onRowLabel?: (row: number) => void;
  tooltip: (cell: CellRef) => ReactNode;
  /** What a screen reader hears for a cell. */
  describe: (cell: CellRef) => string;
  label: string;
  /** Drawing area height at zoom 1 (the rows fit in it, between 4 and 40 px each). */
  height?: number;
}

const LABEL_W = 220;
const BAR_W = 64;
const HEADER_H = 44;
const MAX_ZOOM = 64;

interface View {
  zoomX: number;
  zoomY: number;
  /** First visible cell, fractional. */
  x0: number;
  y0: number;
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(Math.max(v, lo), hi);
}

/** The influence heatmap: every cell a pixel of an offscreen image, scaled onto one canvas
 * (no DOM node per cell), so 100 × 1000 hovers and zooms without lag. Row labels and
 * column numbers stay in place while zooming and panning; arrow keys move the selected
 * cell, Enter opens it. */
export function Heatmap(props: HeatmapProps) {
  const { pixels, rows, cols, selected, onSelect, onOpen, tooltip, describe, label, height = 520 } = props;
  const wrap = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const bars = useRef<HTMLCanvasElement>(null);
  const [width, setWidth] = useState(800);
  const [view, setView] = useState<View>({ zoomX: 1, zoomY: 1, x0: 0, y0: 0 });
  const [hover, setHover] = useState<(CellRef & { x: number; y: number }) | null>(null);
  const drag = useRef<{ x: number; y: number; x0: number; y0: number; moved: boolean } | null>(null);

  useLayoutEffect(() => {
    const el = wrap.current;
    if (!el) return;
    const observer = new ResizeObserver(() => setWidth(el.clientWidth));
    observer.observe(el);
    setWidth(el.clientWidth);
    return () => observer.disconnect();
  }, []);

  const plotW = Math.max(width - LABEL_W - BAR_W, 100);
  const baseCh = clamp(height / Math.max(rows, 1), 4, 40);
  const plotH = Math.round(Math.min(rows * baseCh, height));
  const cw = (plotW / Math.max(cols, 1)) * view.zoomX;
  const ch = baseCh * view.zoomY * (rows * baseCh > height ? height / (rows * baseCh) : 1);
  const visibleCols = plotW / cw;
  const visibleRows = plotH / ch;

  // Keep the view inside the matrix when the data or the size changes.
  useEffect(() => {
    setView((v) => ({ ...v, x0: clamp(v.x0, 0, Math.max(cols - visibleCols, 0)), y0: clamp(v.y0, 0, Math.max(rows - visibleRows, 0)) }));
  }, [cols, rows, visibleCols, visibleRows]);

  const image = useMemo(() => {
    if (rows === 0 || cols === 0) return null;
    const off = document.createElement("canvas");
    off.width = cols;
    off.height = rows;
    const ctx = off.getContext("2d");
    if (!ctx) return null;
    const data = new ImageData(cols, rows);
    data.data.set(pixels.subarray(0, rows * cols * 4));
    if (props.colMask) {
      // Columns the filter leaves out fade towards the panel colour.
      for (let r = 0; r < rows; r++)
        for (let c = 0; c < cols; c++)
          if (!props.colMask[c]) {
            const i = (r * cols + c) * 4;
            data.data[i + 3] = 50;
          }
    }
    ctx.putImageData(data, 0, 0);
    return off;
  }, [pixels, rows, cols, props.colMask]);

  const draw = useCallback(() => {
    const el = canvas.current;
    if (!el || !image) return;
    const dpr = window.devicePixelRatio || 1;
    if (el.width !== Math.round(plotW * dpr) || el.height !== Math.round(plotH * dpr)) {
      el.width = Math.round(plotW * dpr);
      el.height = Math.round(plotH * dpr);
    }
    const ctx = el.getContext("2d")!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, plotW, plotH);
    ctx.imageSmoothingEnabled = false;
    // Whole cells from x0/y0 on, drawn at cw × ch each (partial first cells are shifted).
    const sx = Math.floor(view.x0);
    const sy = Math.floor(view.y0);
    const sw = Math.min(Math.ceil(visibleCols) + 1, cols - sx);
    const sh = Math.min(Math.ceil(visibleRows) + 1, rows - sy);
    const dx = -(view.x0 - sx) * cw;
    const dy = -(view.y0 - sy) * ch;
    ctx.drawImage(image, sx, sy, sw, sh, dx, dy, sw * cw, sh * ch);
    const style = getComputedStyle(el);
    if (cw >= 8 && ch >= 8) {
      ctx.strokeStyle = style.getPropertyValue("--heat-grid") || "rgba(0,0,0,0.25)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let c = 0; c <= sw; c++) {
        const x = Math.round(dx + c * cw) + 0.5;
        ctx.moveTo(x, 0);
        ctx.lineTo(x, plotH);
      }
      for (let r = 0; r <= sh; r++) {
        const y = Math.round(dy + r * ch) + 0.5;
        ctx.moveTo(0, y);
        ctx.lineTo(plotW, y);
      }
      ctx.stroke();
    }
    const outline = (c: CellRef, color: string, widthPx: number) => {
      const x = (c.col - view.x0) * cw;
      const y = (c.row - view.y0) * ch;
      ctx.strokeStyle = color;
      ctx.lineWidth = widthPx;
      ctx.strokeRect(x + widthPx / 2, y + widthPx / 2, Math.max(cw - widthPx, 1), Math.max(ch - widthPx, 1));
    };
    if (hover) outline(hover, style.getPropertyValue("--heat-hover").trim() || "#94a3b8", 1.5);
    if (selected) {
      // The selected row gets a band, the cell a strong outline.
      const y = (selected.row - view.y0) * ch;
      ctx.fillStyle = "rgba(59,130,246,0.10)";
      ctx.fillRect(0, y, plotW, ch);
      outline(selected, style.getPropertyValue("--heat-selected").trim() || "#0f172a", 2);
    }
  }, [image, plotW, plotH, view, cw, ch, cols, rows, visibleCols, visibleRows, hover, selected]);

  useEffect(() => {
    const frame = requestAnimationFrame(draw);
    return () => cancelAnimationFrame(frame);
  }, [draw]);

  // Column sums above, row sums to the right: small signed bars.
  useEffect(() => {
    const el = bars.current;
    if (!el || !props.colBars) return;
    const dpr = window.devicePixelRatio || 1;
    el.width = Math.round(plotW * dpr);
    el.height = Math.round(22 * dpr);
    const ctx = el.getContext("2d")!;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, plotW, 22);
    let max = 0;
    props.colBars.forEach((v) => (max = Math.max(max, Math.abs(v))));
    if (max === 0) return;
    const style = getComputedStyle(el);
    const pos = style.getPropertyValue("--heat-pos").trim() || "#d6604d";
    const neg = style.getPropertyValue("--heat-neg").trim() || "#4393c3";
    const first = Math.floor(view.x0);
    for (let c = first; c < Math.min(cols, first + visibleCols + 1); c++) {
      const v = props.colBars[c]!;
      const h = (Math.abs(v) / max) * 20;
      ctx.fillStyle = v >= 0 ? pos : neg;
      const x = (c - view.x0) * cw;
      ctx.fillRect(x + (cw > 4 ? 1 : 0), 22 - h, Math.max(cw - (cw > 4 ? 2 : 0), 0.5), h);
    }
  }, [props.colBars, plotW, view.x0, cw, cols, visibleCols]);

  const cellAt = (clientX: number, clientY: number): CellRef | null => {
    const el = canvas.current;
    if (!el) return null;
    const rect = el.getBoundingClientRect();
    const col = Math.floor(view.x0 + (clientX - rect.left) / cw);
    const row = Math.floor(view.y0 + (clientY - rect.top) / ch);
    if (row < 0 || col < 0 || row >= rows || col >= cols) return null;
    return { row, col };
  };

  const zoomAt = (factorX: number, factorY: number, anchorX: number, anchorY: number) => {
    setView((v) => {
      const zoomX = clamp(v.zoomX * factorX, 1, Math.max(MAX_ZOOM, cols / 4));
      const zoomY = clamp(v.zoomY * factorY, 1, Math.max(MAX_ZOOM / 4, rows / 4));
      const cwNew = (plotW / cols) * zoomX;
      const chNew = (ch / v.zoomY) * zoomY;
      const cellX = v.x0 + anchorX / cw;
      const cellY = v.y0 + anchorY / ch;
      return {
        zoomX,
        zoomY,
        x0: clamp(cellX - anchorX / cwNew, 0, Math.max(cols - plotW / cwNew, 0)),
        y0: clamp(cellY - anchorY / chNew, 0, Math.max(rows - plotH / chNew, 0)),
      };
    });
  };

  // Wheel: zoom the columns at the pointer (with Shift: the rows); a native listener,
  // because React's wheel events are passive and the page must not scroll meanwhile.
  useEffect(() => {
    const el = canvas.current;
    if (!el) return;
    const onWheel = (e: WheelEvent) => {
      e.preventDefault();
      const rect = el.getBoundingClientRect();
      const factor = Math.exp(-e.deltaY * 0.0015);
      if (e.shiftKey) zoomAt(1, factor, e.clientX - rect.left, e.clientY - rect.top);
      else zoomAt(factor, 1, e.clientX - rect.left, e.clientY - rect.top);
    };
    el.addEventListener("wheel", onWheel, { passive: false });
    return () => el.removeEventListener("wheel", onWheel);
  });

  const ensureVisible = (c: CellRef) => {
    setView((v) => {
      let { x0, y0 } = v;
      if (c.col < x0) x0 = c.col;
      if (c.col + 1 > x0 + visibleCols) x0 = c.col + 1 - visibleCols;
      if (c.row < y0) y0 = c.row;
      if (c.row + 1 > y0 + visibleRows) y0 = c.row + 1 - visibleRows;
      return { ...v, x0: clamp(x0, 0, Math.max(cols - visibleCols, 0)), y0: clamp(y0, 0, Math.max(rows - visibleRows, 0)) };
    });
  };

  // The cell the keys last moved to: keys pressed faster than a render must build on it,
  // not on the `selected` of the last render.
  const keyed = useRef<CellRef | null>(null);
  useEffect(() => {
    keyed.current = selected;
  }, [selected]);

  const onKeyDown = (e: KeyboardEvent<HTMLDivElement>) => {
    const current = keyed.current ?? selected ?? { row: 0, col: 0 };
    const step = e.shiftKey ? 10 : 1;
    let next: CellRef | null = null;
    if (e.key === "ArrowRight") next = { ...current, col: Math.min(current.col + step, cols - 1) };
    else if (e.key === "ArrowLeft") next = { ...current, col: Math.max(current.col - step, 0) };
    else if (e.key === "ArrowDown") next = { ...current, row: Math.min(current.row + step, rows - 1) };
    else if (e.key === "ArrowUp") next = { ...current, row: Math.max(current.row - step, 0) };
    else if (e.key === "Home") next = { ...current, col: 0 };
    else if (e.key === "End") next = { ...current, col: cols - 1 };
    else if (e.key === "Enter" || e.key === " ") {
      if (selected) onOpen?.(selected);
      else onSelect(current);
      e.preventDefault();
      return;
    } else if (e.key === "+" || e.key === "=") {
      zoomAt(1.5, 1, plotW / 2, plotH / 2);
    } else if (e.key === "-") {
      zoomAt(1 / 1.5, 1, plotW / 2, plotH / 2);
    } else {
      return;
    }
    e.preventDefault();
    if (next) {
      keyed.current = next;
      onSelect(next);
      ensureVisible(next);
    }
  };

  const firstRow = Math.max(Math.floor(view.y0), 0);
  const lastRow = Math.min(Math.ceil(view.y0 + visibleRows), rows);
  const firstCol = Math.max(Math.floor(view.x0), 0);
  const lastCol = Math.min(Math.ceil(view.x0 + visibleCols), cols);
  // Column numbers need room for their digits; row labels need about 12 px. Where cells
  // are smaller, every k-th one is labelled.
  const labelPx = 7 * String(cols).length + 8;
  const labelEvery = cw >= labelPx ? 1 : Math.ceil(labelPx / cw);
  const rowEvery = ch >= 11 ? 1 : Math.ceil(12 / ch);
  let rowMax = 0;
  props.rowBars?.forEach((v) => (rowMax = Math.max(rowMax, Math.abs(v))));

  return (
    <div className="heatmap" ref={wrap}>
      <div
        className="heatmap-focus"
        role="region"
        aria-label={label}
        aria-roledescription="heatmap"
        aria-describedby="heatmap-help"
        tabIndex={0}
        onKeyDown={onKeyDown}
      >
        <span id="heatmap-help" className="sr-only">
          Arrow keys move the selected cell (Shift: ten at a time), Enter opens its details, plus and minus zoom.
        </span>
        <div className="heatmap-grid" style={{ gridTemplateColumns: `${LABEL_W}px ${plotW}px ${BAR_W}px` }}>
          <div className="heatmap-corner">
            <span>Σ column</span>
          </div>
          <div className="heatmap-colhead" style={{ height: HEADER_H }}>
            {props.colBars ? <canvas ref={bars} className="heatmap-bars" style={{ width: plotW, height: 22 }} aria-hidden="true" /> : null}
            <div className="heatmap-collabels" aria-hidden="true">
              {Array.from({ length: lastCol - firstCol }, (_, i) => firstCol + i)
                .filter((c) => c % labelEvery === 0)
                .map((c) => (
                  <span
                    key={c}
                    className={selected?.col === c ? "active" : ""}
                    style={{ left: (c - view.x0) * cw, width: Math.max(cw * labelEvery, labelPx) }}
                  >
                    {props.colLabels[c]}
                  </span>
                ))}
            </div>
          </div>
          <div className="heatmap-corner right">
            <span>Σ row</span>
          </div>
          <div className="heatmap-rowlabels" style={{ height: plotH }}>
            {Array.from({ length: lastRow - firstRow }, (_, i) => firstRow + i)
              .filter((r) => r % rowEvery === 0)
              .map((r) => (
                <button
                  key={r}
                  type="button"
                  tabIndex={-1}
                  className={`heatmap-rowlabel ${selected?.row === r ? "active" : ""} ${rowEvery > 1 ? "sparse" : ""}`}
                  style={{ top: (r - view.y0) * ch, height: Math.max(ch * rowEvery, 12), fontSize: ch < 16 ? 11 : 12 }}
                  title={props.rowTitles?.[r]}
                  onClick={() => {
                    onSelect({ row: r, col: selected?.col ?? 0 });
                    props.onRowLabel?.(r);
                  }}
                >
                  {rowEvery > 1 ? props.rowLabels[r]?.split(/\s+/)[0] : props.rowLabels[r]}
                </button>
              ))}
          </div>
          <canvas
            ref={canvas}
            className="heatmap-canvas"
            style={{ width: plotW, height: plotH }}
            aria-hidden="true"
            onMouseMove={(e) => {
              const d = drag.current;
              if (d) {
                const dxCells = (e.clientX - d.x) / cw;
                const dyCells = (e.clientY - d.y) / ch;
                if (Math.abs(e.clientX - d.x) + Math.abs(e.clientY - d.y) > 3) d.moved = true;
                if (d.moved) {
                  setView((v) => ({
                    ...v,
                    x0: clamp(d.x0 - dxCells, 0, Math.max(cols - visibleCols, 0)),
                    y0: clamp(d.y0 - dyCells, 0, Math.max(rows - visibleRows, 0)),
                  }));
                  setHover(null);
                  return;
                }
              }
              const c = cellAt(e.clientX, e.clientY);
              const rect = wrap.current!.getBoundingClientRect();
              setHover(c ? { ...c, x: e.clientX - rect.left, y: e.clientY - rect.top } : null);
            }}
            onMouseLeave={() => {
              setHover(null);
              drag.current = null;
            }}
            onMouseDown={(e) => {
              drag.current = { x: e.clientX, y: e.clientY, x0: view.x0, y0: view.y0, moved: false };
            }}
            onMouseUp={(e) => {
              const d = drag.current;
              drag.current = null;
              if (d?.moved) return;
              const c = cellAt(e.clientX, e.clientY);
              if (c) onSelect(c);
            }}
            onDoubleClick={(e) => {
              const c = cellAt(e.clientX, e.clientY);
              if (c) onOpen?.(c);
            }}
          />
          <div className="heatmap-rowbars" style={{ height: plotH }} aria-hidden="true">
            {props.rowBars && ch >= 6
              ? Array.from({ length: lastRow - firstRow }, (_, i) => firstRow + i).map((r) => {
                  const v = props.rowBars![r]!;
                  const w = rowMax ? (Math.abs(v) / rowMax) * 26 : 0;
                  return (
                    <div key={r} className="rowbar" style={{ top: (r - view.y0) * ch, height: ch }}>
                      <span className={v >= 0 ? "pos" : "neg"} style={{ width: w }} />
                      {ch >= 14 ? (
                        <em>
                          {v >= 0 ? "+" : "−"}
                          {Math.abs(v).toPrecision(2)}
                        </em>
                      ) : null}
                    </div>
                  );
                })
              : null}
          </div>
        </div>
        <div className="heatmap-tools">
          <span className="dim">
            {lastCol - firstCol < cols || lastRow - firstRow < rows
              ? `showing columns ${firstCol + 1}–${lastCol} of ${cols}, rows ${firstRow + 1}–${lastRow} of ${rows}`
              : `${rows} × ${cols}`}{" "}
            · wheel zooms columns, Shift+wheel rows, drag pans
          </span>
          <span className="grow" />
          <button
            type="button"
            className="icon-btn icon-btn-sm"
            aria-label="Zoom out"
            onClick={() => zoomAt(1 / 1.6, 1 / 1.6, plotW / 2, plotH / 2)}
          >
            <Minus />
          </button>
          <button
            type="button"
            className="icon-btn icon-btn-sm"
            aria-label="Zoom in"
            onClick={() => zoomAt(1.6, 1.6, plotW / 2, plotH / 2)}
          >
            <Plus />
          </button>
          <button
            type="button"
            className="icon-btn icon-btn-sm"
            aria-label="Fit the whole matrix"
            onClick={() => setView({ zoomX: 1, zoomY: 1, x0: 0, y0: 0 })}
          >
            <Maximize />
          </button>
        </div>
        <div className="sr-only" aria-live="polite">
          {selected ? describe(selected) : ""}
        </div>
      </div>
      {hover ? (
        <div
          className="heatmap-tooltip"
          role="tooltip"
          style={{
            left: Math.min(hover.x + 16, width - 340),
            top: hover.y + 18,
          }}
        >
          {tooltip(hover)}
        </div>
      ) : null}
    </div>
  );
}
