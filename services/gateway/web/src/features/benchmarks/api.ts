import { useQuery } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { isTerminal } from "@/lib/runStatus";

export type Leaderboard = Schemas["Leaderboard"];
export type LeaderboardRow = Schemas["LeaderboardRow"];

/** A benchmark run's leaderboard; refreshed while the run is still going. */
export function useLeaderboard(runId: string | undefined) {
  return useQuery({
    queryKey: ["benchmarks", runId ?? ""],
    queryFn: () => unwrap(api.GET("/api/benchmarks/{run_id}", { params: { path: { run_id: runId! } } })),
    enabled: Boolean(runId),
    refetchInterval: (query) => (query.state.data && !isTerminal(query.state.data.status) ? 10_000 : false),
  });
}
