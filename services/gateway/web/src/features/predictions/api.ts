import { useQuery } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { queryKeys } from "@/lib/queryKeys";

export type Prediction = Schemas["PredictionOut"];

const PAGE = 500;

/** Every sampled answer of the run (a few per sampling point: small), all pages. */
async function fetchAll(runId: string): Promise<Prediction[]> {
  const rows: Prediction[] = [];
  for (let offset = 0; ; offset += PAGE) {
    const page = await unwrap(
      api.GET("/api/runs/{run_id}/predictions", { params: { path: { run_id: runId }, query: { limit: PAGE, offset } } }),
    );
    rows.push(...page.items);
    if (rows.length >= page.total || page.items.length === 0) return rows;
  }
}

/** Re-read when the live stream announces new predictions (`version`). */
export function usePredictions(runId: string, version: number) {
  return useQuery({
    queryKey: queryKeys.predictions(runId, { version }),
    queryFn: () => fetchAll(runId),
    placeholderData: (previous) => previous,
  });
}
