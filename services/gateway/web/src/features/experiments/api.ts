import { keepPreviousData, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { queryKeys } from "@/lib/queryKeys";

export type ExperimentSummary = Schemas["ExperimentSummary"];
export type Experiment = Schemas["ExperimentOut"];
export type ExperimentCreate = Schemas["ExperimentCreate"];
export type ExperimentUpdate = Schemas["ExperimentUpdate"];
export type ExperimentSort = "updated" | "name" | "last_run_status" | "created";

export interface ExperimentListParams {
  q?: string;
  sort?: ExperimentSort;
  order?: "asc" | "desc";
  limit?: number;
}

export function useExperimentList(params: ExperimentListParams = {}) {
  return useQuery({
    queryKey: queryKeys.experimentList(params),
    queryFn: () =>
      unwrap(
        api.GET("/api/experiments", {
          params: { query: { q: params.q || undefined, sort: params.sort, order: params.order, limit: params.limit ?? 200 } },
        }),
      ),
    placeholderData: keepPreviousData,
  });
}

export function useExperiment(id: string | undefined) {
  return useQuery({
    queryKey: queryKeys.experiment(id ?? ""),
    queryFn: () => unwrap(api.GET("/api/experiments/{experiment_id}", { params: { path: { experiment_id: id! } } })),
    enabled: Boolean(id),
  });
}

export function useExperimentMutations() {
  const client = useQueryClient();
  const refresh = () => client.invalidateQueries({ queryKey: queryKeys.experiments });
  const create = useMutation({
    mutationFn: (body: ExperimentCreate) => unwrap(api.POST("/api/experiments", { body }), "Could not save the experiment"),
    onSuccess: (experiment) => {
      client.setQueryData(queryKeys.experiment(experiment.id), experiment);
      void refresh();
    },
  });
  const update = useMutation({
    mutationFn: ({ id, body }: { id: string; body: ExperimentUpdate }) =>
      unwrap(
        api.PATCH("/api/experiments/{experiment_id}", { params: { path: { experiment_id: id } }, body }),
        "Could not save the experiment",
      ),
    onSuccess: (experiment) => {
      client.setQueryData(queryKeys.experiment(experiment.id), experiment);
      void refresh();
    },
  });
  const duplicate = useMutation({
    mutationFn: (id: string) =>
      unwrap(api.POST("/api/experiments/{experiment_id}/duplicate", { params: { path: { experiment_id: id } } }), "Could not duplicate"),
    onSuccess: () => void refresh(),
  });
  const remove = useMutation({
    mutationFn: (id: string) =>
      unwrap(api.DELETE("/api/experiments/{experiment_id}", { params: { path: { experiment_id: id } } }), "Could not delete"),
    onSuccess: (_, id) => {
      client.removeQueries({ queryKey: queryKeys.experiment(id) });
      void refresh();
    },
  });
  return { create, update, duplicate, remove };
}
