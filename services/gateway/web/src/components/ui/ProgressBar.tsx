interface ProgressBarProps {
  /** 0..1 */
  value: number;
  label: string;
  tone?: "accent" | "success" | "error" | "warning";
  className?: string;
}

/** A progress bar with its role and value for assistive technology (0-100). */
export function ProgressBar({ value, label, tone = "accent", className }: ProgressBarProps) {
  const percent = Math.round(Math.min(Math.max(value, 0), 1) * 100);
  return (
    <div
      className={`progress ${tone === "accent" ? "" : tone} ${className ?? ""}`}
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={percent}
    >
      <span style={{ width: `${percent}%` }} />
    </div>
  );
}
