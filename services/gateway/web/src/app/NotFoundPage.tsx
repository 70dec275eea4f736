import { SearchX } from "lucide-react";
import { Link } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";

/** Anything the signed-in user may not see (another user's run, a bad id) lands here:
 * the same page whether it does not exist or is someone else's. */
export function NotFound({ what = "Page" }: { what?: string }) {
  return (
    <div className="page">
      <div className="empty-state" style={{ paddingTop: 80 }}>
        <SearchX />
        <h1>{what} not found</h1>
        <p>It does not exist, or it is not yours to see.</p>
        <Link to="/experiments" className="btn btn-sm">
          Go to experiments
        </Link>
      </div>
    </div>
  );
}

export function NotFoundPage() {
  usePageCrumbs([{ label: "Not found" }]);
  return <NotFound />;
}
