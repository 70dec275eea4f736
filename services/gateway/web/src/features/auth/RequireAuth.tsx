import { useEffect, type ReactNode } from "react";
import { Navigate, useLocation, useNavigate } from "react-router";
import { useQueryClient } from "@tanstack/react-query";
import { ErrorState } from "@/components/ui/Feedback";
import { onUnauthorized } from "@/lib/api/client";
import { queryKeys } from "@/lib/queryKeys";
import { useMe } from "./api";
import { consumeNext } from "./next";

/** Signed-out visitors go to sign-in and come back to the page they asked for. */
export function RequireAuth({ children, fallback }: { children: ReactNode; fallback: ReactNode }) {
  const me = useMe();
  const location = useLocation();
  const navigate = useNavigate();
  const client = useQueryClient();

  // A session that ends while the page is open (signed out elsewhere, expired).
  useEffect(() => onUnauthorized(() => client.setQueryData(queryKeys.me, null)), [client]);

  // Back from Google: it lands on "/", the deep link was kept before leaving.
  useEffect(() => {
    if (me.data) {
      const next = consumeNext();
      if (next && next !== location.pathname + location.search) navigate(next, { replace: true });
    }
  }, [me.data, location.pathname, location.search, navigate]);

  if (me.isPending) return <>{fallback}</>;
  if (me.isError) return <ErrorState error={me.error} onRetry={() => void me.refetch()} title="Could not reach the gateway" />;
  if (!me.data) {
    const here = location.pathname + location.search;
    return <Navigate to={here === "/" ? "/signin" : `/signin?next=${encodeURIComponent(here)}`} replace />;
  }
  return <>{children}</>;
}
