/** Numbers, durations and times as the app shows them: compact, monospaced where they are data. */

export function formatDuration(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  // Under a second still reads "1 s": durations are always "N s", "N min" or "N h".
  if (seconds < 1) return "1 s";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min`;
  const hours = seconds / 3600;
  return `${hours < 10 ? hours.toFixed(1) : Math.round(hours)} h`;
}

/** 1:08, 12:04:11: a clock-like elapsed time. */
export function formatElapsed(seconds: number | null | undefined): string {
  if (seconds == null || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.floor(seconds % 60);
  const m = Math.floor((seconds / 60) % 60);
  const h = Math.floor(seconds / 3600);
  const pad = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
}

export function formatCost(usd: number | null | undefined): string {
  if (usd == null || !Number.isFinite(usd)) return "–";
  return `$${usd.toFixed(2)}`;
}

export function formatNumber(value: number | null | undefined, digits = 3): string {
  if (value == null || !Number.isFinite(value)) return "–";
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(Math.max(digits - 2, 1));
  return Number(value.toPrecision(digits)).toString();
}

/** A learning rate as researchers write it: 1e-3, 5e-4, 0.02. */
export function formatLr(value: number | null | undefined): string {
  if (value == null || !Number.isFinite(value)) return "–";
  if (value === 0) return "0";
  const exp = Math.floor(Math.log10(Math.abs(value)));
  if (exp <= -3) {
    const mantissa = value / 10 ** exp;
    const m = Number(mantissa.toPrecision(2));
    return `${m}e${exp}`;
  }
  return Number(value.toPrecision(3)).toString();
}

export function formatPercent(fraction: number | null | undefined, digits = 0): string {
  if (fraction == null || !Number.isFinite(fraction)) return "–";
  return `${(fraction * 100).toFixed(digits)}%`;
}

export function formatSigned(value: number | null | undefined, digits = 4): string {
  if (value == null || !Number.isFinite(value)) return "–";
  const text = formatNumber(value, digits);
  return value > 0 ? `+${text}` : text;
}

const RELATIVE: [number, Intl.RelativeTimeFormatUnit][] = [
  [60, "second"],
  [60, "minute"],
  [24, "hour"],
  [7, "day"],
  [4.345, "week"],
  [12, "month"],
  [Number.POSITIVE_INFINITY, "year"],
];
const relativeFormat = new Intl.RelativeTimeFormat("en", { numeric: "auto", style: "short" });

export function formatRelative(iso: string | null | undefined, now: number = Date.now()): string {
  if (!iso) return "–";
  let delta = (new Date(iso).getTime() - now) / 1000;
  if (Math.abs(delta) < 45) return "just now";
  for (const [step, unit] of RELATIVE) {
    if (Math.abs(delta) < step) return relativeFormat.format(Math.round(delta), unit);
    delta /= step;
  }
  return "–";
}

export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "–";
  return new Date(iso).toLocaleTimeString("en-GB", { hour12: false });
}

export function formatDateTime(iso: string | null | undefined): string {
  if (!iso) return "–";
  return new Date(iso).toLocaleString("en-GB", { hour12: false, dateStyle: "medium", timeStyle: "short" });
}

/** The short form of a uuid the UI shows (`7f3a2c`); the full id stays in the URL. */
export function shortId(id: string): string {
  return id.replace(/-/g, "").slice(0, 6);
}

/** ~4 characters a token: the gateway's own estimate (GET /api/limits says so). */
export function estimateTokens(text: string | null | undefined): number {
  return text ? Math.ceil(text.length / 4) : 0;
}
