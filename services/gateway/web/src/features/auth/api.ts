import { useQuery, useQueryClient } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { setCsrfToken } from "@/lib/api/csrf";
import { toApiError } from "@/lib/api/errors";
import { queryKeys } from "@/lib/queryKeys";

export type User = Schemas["UserOut"];
export type SignedIn = Schemas["SignedIn"];

/** The signed-in user, or null when nobody is. */
export async function fetchMe(): Promise<User | null> {
  const session = await unwrap(api.GET("/api/auth/session"), "Could not check the session");
  setCsrfToken(session.user?.csrf_token ?? null);
  return session.user ?? null;
}

export function useMe() {
  return useQuery({ queryKey: queryKeys.me, queryFn: fetchMe, staleTime: 60_000, retry: 1 });
}

export function useProviders() {
  return useQuery({
    queryKey: queryKeys.providers,
    queryFn: () => unwrap(api.GET("/api/auth/providers")),
    staleTime: Number.POSITIVE_INFINITY,
  });
}

/** After any sign-in: remember the CSRF token and the user, drop what a previous user saw. */
export function useAcceptSignIn() {
  const client = useQueryClient();
  return (signedIn: SignedIn) => {
    setCsrfToken(signedIn.csrf_token);
    client.removeQueries({ predicate: (q) => q.queryKey[0] !== "auth" });
    client.setQueryData(queryKeys.me, signedIn.user);
  };
}

export async function signIn(email: string, password: string): Promise<SignedIn> {
  return unwrap(api.POST("/api/auth/login", { body: { email, password } }), "Sign-in failed");
}

export async function signOut(): Promise<void> {
  await unwrap(api.POST("/api/auth/logout"), "Sign-out failed");
  setCsrfToken(null);
}

export type RegisterOutcome = { kind: "signed-in"; signedIn: SignedIn } | { kind: "verify"; email: string };

/** A new account: signed in at once, or (where the deployment requires it) after the
 * link in the verification mail has been followed. */
export async function register(email: string, password: string): Promise<RegisterOutcome> {
  const { data, error, response } = await api.POST("/api/auth/register", { body: { email, password } });
  if (!response.ok) throw toApiError(response.status, error, "Could not create the account");
  if (response.status === 202) return { kind: "verify", email };
  return { kind: "signed-in", signedIn: data as SignedIn };
}
