import { Skeleton } from "@/components/ui/Feedback";

/** What a page shows while its data loads: its shape, not a spinner. */
export function PageSkeleton({ full = false }: { full?: boolean }) {
  return (
    <div className="page" style={full ? { height: "100%", background: "var(--bg)" } : undefined} role="status" aria-label="Loading">
      <Skeleton width={220} height={22} />
      <div className="grid-4">
        {[0, 1, 2, 3].map((i) => (
          <Skeleton key={i} height={64} />
        ))}
      </div>
      <Skeleton height={280} />
    </div>
  );
}
