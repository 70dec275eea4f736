import { useQueryClient } from "@tanstack/react-query";
import { useEffect, useReducer, useState } from "react";
import { queryKeys } from "@/lib/queryKeys";
import { applyEvents, EVENT_KINDS, fromSnapshot, type LiveRun, type RunEvent, type RunSnapshot } from "./liveState";

export type StreamState = "connecting" | "live" | "reconnecting" | "ended";

type Action = { type: "seed"; run: RunSnapshot } | { type: "events"; events: { id: number; event: RunEvent }[] };

function reducer(state: LiveRun | null, action: Action): LiveRun | null {
  if (action.type === "seed") return state && state.runId === action.run.id ? state : fromSnapshot(action.run);
  return state ? applyEvents(state, action.events) : state;
}

/** The run's live state: seeded from the snapshot, then every event of its stream from
 * the first (a reload replays the run; EventSource resumes with Last-Event-ID after a
 * dropped connection). Events are applied in batches, at most once per frame. */
export function useLiveRun(snapshot: RunSnapshot | undefined): { live: LiveRun | null; stream: StreamState } {
  const [live, dispatch] = useReducer(reducer, null);
  const [stream, setStream] = useState<StreamState>("connecting");
  const client = useQueryClient();
  const runId = snapshot?.id;

  useEffect(() => {
    if (snapshot) {
      dispatch({ type: "seed", run: snapshot });
    }
  }, [snapshot]);

  useEffect(() => {
    if (!runId) return;
    let pending: { id: number; event: RunEvent }[] = [];
    let frame = 0;
    const flush = () => {
      frame = 0;
      if (pending.length === 0) return;
      const batch = pending;
      pending = [];
      dispatch({ type: "events", events: batch });
    };
    const source = new EventSource(`/api/runs/${runId}/events`);
    setStream("connecting");
    const onEvent = (message: MessageEvent<string>) => {
      const id = Number(message.lastEventId);
      if (!Number.isFinite(id)) return;
      try {
        pending.push({ id, event: JSON.parse(message.data) as RunEvent });
      } catch {
        return; // not JSON: not ours
      }
      if (!frame) frame = requestAnimationFrame(flush);
      const event = pending[pending.length - 1]!.event;
      if (event.kind === "status" && event.stage === "run") {
        // The run ended (or moved): the snapshot, results and lists re-read.
        void client.invalidateQueries({ queryKey: queryKeys.run(runId) });
        void client.invalidateQueries({ queryKey: queryKeys.runResults(runId) });
        void client.invalidateQueries({ queryKey: queryKeys.runs });
        void client.invalidateQueries({ queryKey: queryKeys.experiments });
      }
      if (event.stage === "validation") {
        void client.invalidateQueries({ queryKey: queryKeys.validations(runId) });
      } else if (event.kind === "result") void client.invalidateQueries({ queryKey: queryKeys.runResults(runId) });
    };
    for (const kind of EVENT_KINDS) source.addEventListener(kind, onEvent as EventListener);
    source.onopen = () => setStream("live");
    source.onerror = () => {
      // CLOSED: the gateway said there is nothing more (204 after the end); otherwise
      // the browser reconnects by itself with Last-Event-ID.
      setStream(source.readyState === EventSource.CLOSED ? "ended" : "reconnecting");
    };
    return () => {
      source.close();
      if (frame) cancelAnimationFrame(frame);
      flush();
    };
  }, [runId, client]);

  return { live, stream };
}
