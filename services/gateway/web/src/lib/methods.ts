/** The influence methods this gateway offers (GET /api/methods): the editor's selector
 * and every label the results views show come from here. */
import { useQuery } from "@tanstack/react-query";
import { api, unwrap, type Schemas } from "./api/client";
import { queryKeys } from "./queryKeys";

export type MethodInfo = Schemas["InfluenceMethodOut"];
export type MethodArgument = Schemas["MethodArgument"];

export function useMethods() {
  return useQuery({
    queryKey: queryKeys.methods,
    queryFn: () => unwrap(api.GET("/api/methods")),
    staleTime: Number.POSITIVE_INFINITY,
  });
}

const FALLBACK: Record<string, string> = { tracin: "TracIn", datainf: "DataInf", ekfac: "EK-FAC", bm25: "BM25" };

export function methodLabel(id: string, methods?: readonly MethodInfo[]): string {
  return methods?.find((m) => m.id === id)?.label ?? FALLBACK[id] ?? id;
}
