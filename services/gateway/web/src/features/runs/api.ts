import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { queryKeys } from "@/lib/queryKeys";
import { isTerminal } from "@/lib/runStatus";

export type Run = Schemas["RunOut"];
export type RunResults = Schemas["RunResults"];

export function useRun(runId: string | undefined) {
  return useQuery({
    queryKey: queryKeys.run(runId ?? ""),
    queryFn: () => unwrap(api.GET("/api/runs/{run_id}", { params: { path: { run_id: runId! } } })),
    enabled: Boolean(runId),
  });
}

export function useRunList(experimentId: string | undefined, limit = 100) {
  return useQuery({
    queryKey: queryKeys.runList({ experimentId, limit }),
    queryFn: () => unwrap(api.GET("/api/runs", { params: { query: { experiment_id: experimentId, limit } } })),
    refetchInterval: (query) => (query.state.data?.some((r) => !isTerminal(r.status)) ? 5_000 : false),
  });
}

export function useRunResults(runId: string | undefined, enabled = true) {
  return useQuery({
    queryKey: queryKeys.runResults(runId ?? ""),
    queryFn: () => unwrap(api.GET("/api/runs/{run_id}/results", { params: { path: { run_id: runId! } } })),
    enabled: Boolean(runId) && enabled,
    staleTime: 60_000,
  });
}

export function useStartRun() {
  const client = useQueryClient();
  return useMutation({
    mutationFn: (experimentId: string) =>
      unwrap(
        api.POST("/api/experiments/{experiment_id}/runs", {
          params: { path: { experiment_id: experimentId } },
          // A retried click (or a network retry) starts one run, not two.
          headers: { "Idempotency-Key": crypto.randomUUID() },
        }),
        "Could not start the run",
      ),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: queryKeys.runs });
      void client.invalidateQueries({ queryKey: queryKeys.experiments });
    },
  });
}

export function useRunControl(runId: string) {
  const client = useQueryClient();
  const refresh = () => client.invalidateQueries({ queryKey: queryKeys.run(runId) });
  const updateParams = useMutation({
    mutationFn: (params: { learning_rate?: number; weight_decay?: number }) =>
      unwrap(api.PATCH("/api/runs/{run_id}/params", { params: { path: { run_id: runId } }, body: params }), "Could not change the run"),
  });
  const cancel = useMutation({
    mutationFn: () => unwrap(api.POST("/api/runs/{run_id}/cancel", { params: { path: { run_id: runId } } }), "Could not cancel the run"),
    onSuccess: () => void refresh(),
  });
  return { updateParams, cancel };
}
