import { AlertTriangle, CheckCircle2, Inbox, Info, RotateCw } from "lucide-react";
import type { CSSProperties, ReactNode } from "react";
import { describeError } from "@/lib/api/errors";

export function Skeleton({ width, height = 14, style }: { width?: number | string; height?: number | string; style?: CSSProperties }) {
  return <span className="skeleton" aria-hidden="true" style={{ width: width ?? "100%", height, ...style }} />;
}

/** Rows of skeleton lines while a table or list loads. */
export function SkeletonRows({ rows = 5, label = "Loading" }: { rows?: number; label?: string }) {
  return (
    <div className="col" style={{ padding: 14, gap: 10 }} role="status" aria-label={label}>
      {Array.from({ length: rows }, (_, i) => (
        <Skeleton key={i} height={16} width={`${92 - ((i * 17) % 30)}%`} />
      ))}
    </div>
  );
}

export function Spinner({ label = "Loading" }: { label?: string }) {
  return <span className="spinner" role="status" aria-label={label} />;
}

/** A failed load: what went wrong and a way to try again. */
export function ErrorState({ error, onRetry, title = "Could not load this" }: { error: unknown; onRetry?: () => void; title?: string }) {
  return (
    <div className="empty-state" role="alert">
      <AlertTriangle style={{ color: "var(--error)" }} />
      <h3>{title}</h3>
      <p>{describeError(error)}</p>
      {onRetry ? (
        <button type="button" className="btn btn-sm" onClick={onRetry}>
          <RotateCw /> Retry
        </button>
      ) : null}
    </div>
  );
}

export function EmptyState({ title, children, icon }: { title: string; children?: ReactNode; icon?: ReactNode }) {
  return (
    <div className="empty-state">
      {icon ?? <Inbox />}
      <h3>{title}</h3>
      {children}
    </div>
  );
}

export function InlineAlert({ children, tone = "error" }: { children: ReactNode; tone?: "error" | "info" | "success" | "warning" }) {
  return (
    <div className={`alert ${tone === "error" ? "" : `alert-${tone}`}`} role={tone === "error" ? "alert" : "status"}>
      {tone === "success" ? <CheckCircle2 /> : tone === "info" ? <Info /> : <AlertTriangle />}
      <div>{children}</div>
    </div>
  );
}
