/** The typed API client, generated from the gateway's /openapi.json (`make web-api`
 * regenerates schema.d.ts; a test fails when it drifts). Same origin, cookie session. */
import createClient, { type Middleware } from "openapi-fetch";
import { csrfToken } from "./csrf";
import { ApiError, toApiError } from "./errors";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

const csrf: Middleware = {
  onRequest({ request }) {
    if (!SAFE.has(request.method)) {
      const token = csrfToken();
      if (token) request.headers.set("X-CSRF-Token", token);
    }
    return request;
  },
};

/** Tells the app a request came back 401: the session ended (signed out elsewhere,
 * expired); the auth feature sends the page to sign-in and back afterwards. */
type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();
export function onUnauthorized(listener: Listener): () => void {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

const session: Middleware = {
  onResponse({ response, request }) {
    if (response.status === 401 && !new URL(request.url).pathname.startsWith("/api/auth/")) {
      unauthorizedListeners.forEach((l) => l());
    }
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: "", credentials: "same-origin" });
api.use(csrf, session);

interface FetchResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The answer's body, or an ApiError carrying the gateway's message and field errors. */
export async function unwrap<T>(call: Promise<FetchResult<T>>, what = "The request failed"): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok) throw toApiError(response.status, error, `${what} (${response.status})`);
  return data as T;
}

export { ApiError };
