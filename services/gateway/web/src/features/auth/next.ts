/** Where to go after signing in: the deep link the user asked for, never another origin. */

const KEY = "inflab.next";

export function safeNext(value: string | null | undefined): string {
  if (!value || !value.startsWith("/") || value.startsWith("//") || value.startsWith("/\\")) return "/";
  if (value.startsWith("/signin")) return "/";
  return value;
}

/** Kept across the round trip to Google (which comes back to "/"). */
export function rememberNext(path: string): void {
  try {
    if (path !== "/") sessionStorage.setItem(KEY, path);
  } catch {
    /* storage off: land on the dashboard */
  }
}

export function consumeNext(): string | null {
  try {
    const value = sessionStorage.getItem(KEY);
    sessionStorage.removeItem(KEY);
    return value ? safeNext(value) : null;
  } catch {
    return null;
  }
}
