import { useCallback } from "react";
import { useSearchParams } from "react-router";
import type { ColOrder, RowOrder, ScaleMode } from "./matrix";

/** What the explorer shows, kept in the URL so a view is a permalink: method, variant,
 * orders, scale, filter, and the selected cell (by ids, so it survives re-ordering). */
export interface ExplorerView {
  method: string | null;
  variant: string | null;
  rows: RowOrder;
  cols: ColOrder;
  scale: ScaleMode;
  filter: string;
  evalId: string | null;
  trainId: string | null;
}

const ROW_ORDERS: RowOrder[] = ["input", "total"];
const COL_ORDERS: ColOrder[] = ["input", "total", "cluster"];
const SCALES: ScaleMode[] = ["shared", "row"];

function pick<T extends string>(value: string | null, allowed: T[], fallback: T): T {
  return allowed.includes(value as T) ? (value as T) : fallback;
}

export function useExplorerView(): [ExplorerView, (change: Partial<ExplorerView>) => void] {
  const [params, setParams] = useSearchParams();
  const view: ExplorerView = {
    method: params.get("method"),
    variant: params.get("variant"),
    rows: pick(params.get("rows"), ROW_ORDERS, "input"),
    cols: pick(params.get("cols"), COL_ORDERS, "input"),
    scale: pick(params.get("scale"), SCALES, "shared"),
    filter: params.get("q") ?? "",
    evalId: params.get("eval"),
    trainId: params.get("train"),
  };
  const update = useCallback(
    (change: Partial<ExplorerView>) => {
      setParams(
        (current) => {
          const next = new URLSearchParams(current);
          const set = (key: string, value: string | null | undefined, fallback?: string) => {
            if (value == null || value === "" || value === fallback) next.delete(key);
            else next.set(key, value);
          };
          if ("method" in change) set("method", change.method);
          if ("variant" in change) set("variant", change.variant);
          if ("rows" in change) set("rows", change.rows, "input");
          if ("cols" in change) set("cols", change.cols, "input");
          if ("scale" in change) set("scale", change.scale, "shared");
          if ("filter" in change) set("q", change.filter);
          if ("evalId" in change) set("eval", change.evalId);
          if ("trainId" in change) set("train", change.trainId);
          return next;
        },
        // Moving the selection should not flood the history; switching views may.
        { replace: !("method" in change || "variant" in change) },
      );
    },
    [setParams],
  );
  return [view, update];
}
