import { isRouteErrorResponse, useRouteError } from "react-router";
import { ErrorState } from "@/components/ui/Feedback";

/** A page that crashed or failed to load its code (e.g. after a deploy): say so, offer a reload. */
export function RouteError() {
  const error = useRouteError();
  const message = isRouteErrorResponse(error) ? new Error(`${error.status} ${error.statusText}`) : error;
  return (
    <div className="page">
      <ErrorState error={message} title="This page failed to load" onRetry={() => window.location.reload()} />
    </div>
  );
}
