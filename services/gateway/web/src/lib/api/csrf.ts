/** The session's CSRF token: taken from the sign-in and `/api/auth/me` answers and sent
 * back in `X-CSRF-Token` on every request that changes something (double submit). The
 * session cookie itself is httpOnly: the page never sees it. */

let token: string | null = null;

export function setCsrfToken(value: string | null | undefined): void {
  token = value ?? null;
}

function fromCookie(): string | null {
  if (typeof document === "undefined") return null;
  const match = document.cookie.split("; ").find((c) => c.startsWith("inflab_csrf="));
  return match ? decodeURIComponent(match.slice("inflab_csrf=".length)) : null;
}

export function csrfToken(): string | null {
  return token ?? fromCookie();
}
