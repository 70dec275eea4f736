import { useQueryClient } from "@tanstack/react-query";
import { useCallback, useEffect, useRef, useState } from "react";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { ApiError, describeError } from "@/lib/api/errors";
import { queryKeys } from "@/lib/queryKeys";
import { bodyIndexToKey, checkDraft, draftFromExperiment, problemsFromApi, toBody, type Draft, type Limits, type Problem } from "./draft";

type Experiment = Schemas["ExperimentOut"];

export type SaveState =
  | { kind: "saved"; at: number }
  | { kind: "dirty" }
  | { kind: "saving" }
  | { kind: "invalid"; count: number }
  | { kind: "error"; message: string }
  | { kind: "local" };

/** How long after the last keystroke the draft is saved to the server. */
const SAVE_DELAY_MS = 800;

interface StoredDraft {
  draft: Draft;
  savedAt: number;
  /** The server's updated_at the draft was based on. */
  base: string | null;
}

function storageKey(userId: string, experimentId: string | null): string {
  return `inflab.draft.${userId}.${experimentId ?? "new"}`;
}

function readStored(key: string): StoredDraft | null {
  try {
    const raw = localStorage.getItem(key);
    return raw ? (JSON.parse(raw) as StoredDraft) : null;
  } catch {
    return null;
  }
}

function writeStored(key: string, value: StoredDraft | null): void {
  try {
    if (value) localStorage.setItem(key, JSON.stringify(value));
    else localStorage.removeItem(key);
  } catch {
    /* storage full or off: the server copy still saves */
  }
}

/** Give the rows the ids the server chose (tr00, ev03...), matching by position in the body. */
function withServerIds(draft: Draft, keys: { training: string[]; evaluation: string[] }, saved: Experiment): Draft {
  const ids = (list: string[], items: { id: string }[]) => new Map(list.map((key, i) => [key, items[i]?.id]));
  const t = ids(keys.training, saved.training_data);
  const e = ids(keys.evaluation, saved.eval_data);
  return {
    ...draft,
    training: draft.training.map((r) => (r.id || !t.get(r.key) ? r : { ...r, id: t.get(r.key)! })),
    evaluation: draft.evaluation.map((r) => (r.id || !e.get(r.key) ? r : { ...r, id: e.get(r.key)! })),
  };
}

/** The editor's draft: edited in the page, kept in this browser at every change (a reload
 * loses nothing), and saved to the server shortly after typing stops whenever it is
 * valid. A new experiment is created on its first valid save (`onCreated`). */
export function useDraft(options: {
  userId: string;
  experiment: Experiment | null;
  initial: Draft;
  limits: Limits | undefined;
  onCreated: (experiment: Experiment) => void;
}) {
  const { userId, experiment, limits, onCreated } = options;
  const client = useQueryClient();
  const key = storageKey(userId, experiment?.id ?? null);
  const [start] = useState(() => {
    const stored = readStored(key);
    // A local copy based on the server's current version: changes not saved yet.
    if (stored && (!experiment || stored.base === experiment.updated_at)) {
      return { draft: stored.draft, restored: JSON.stringify(stored.draft) !== JSON.stringify(options.initial) };
    }
    return { draft: options.initial, restored: false };
  });
  const [restored, setRestored] = useState(start.restored);
  const [draft, setDraftState] = useState<Draft>(start.draft);
  const [save, setSave] = useState<SaveState>(() =>
    start.restored ? { kind: "dirty" } : experiment ? { kind: "saved", at: Date.now() } : { kind: "local" },
  );
  const [apiProblems, setApiProblems] = useState<Problem[]>([]);
  const latest = useRef(draft);
  const base = useRef<string | null>(experiment?.updated_at ?? null);
  const experimentId = useRef<string | null>(experiment?.id ?? null);
  const timer = useRef<number | undefined>(undefined);
  const inflight = useRef<Promise<boolean> | null>(null);
  const dirty = useRef(start.restored);

  const problems = checkDraft(draft, limits);

  const persistLocally = useCallback(
    (d: Draft) => writeStored(storageKey(userId, experimentId.current), { draft: d, savedAt: Date.now(), base: base.current }),
    [userId],
  );

  const saveNow = useCallback(async (): Promise<boolean> => {
    if (inflight.current) await inflight.current;
    const d = latest.current;
    if (!dirty.current && experimentId.current) return true;
    const local = checkDraft(d, limits);
    if (local.length > 0) {
      setSave({ kind: "invalid", count: local.length });
      return false;
    }
    const keys = { training: bodyIndexToKey(d.training), evaluation: bodyIndexToKey(d.evaluation) };
    dirty.current = false;
    setSave({ kind: "saving" });
    const run = (async () => {
      try {
        const body = toBody(d);
        const saved = experimentId.current
          ? await unwrap(
              api.PATCH("/api/experiments/{experiment_id}", { params: { path: { experiment_id: experimentId.current } }, body }),
              "Could not save",
            )
          : await unwrap(api.POST("/api/experiments", { body }), "Could not save");
        const created = !experimentId.current;
        if (created) writeStored(storageKey(userId, null), null);
        experimentId.current = saved.id;
        base.current = saved.updated_at;
        client.setQueryData(queryKeys.experiment(saved.id), saved);
        void client.invalidateQueries({ queryKey: queryKeys.experiments });
        const next = withServerIds(latest.current, keys, saved);
        latest.current = next;
        setDraftState(next);
        setApiProblems([]);
        if (dirty.current) persistLocally(next);
        else writeStored(storageKey(userId, saved.id), null);
        setSave(dirty.current ? { kind: "dirty" } : { kind: "saved", at: Date.now() });
        if (created) onCreated(saved);
        return true;
      } catch (e) {
        dirty.current = true;
        if (e instanceof ApiError && e.problems.length > 0) setApiProblems(problemsFromApi(d, e.problems));
        else if (e instanceof ApiError && e.status === 422) setApiProblems([{ field: "name", message: e.message }]);
        setSave({ kind: "error", message: describeError(e) });
        return false;
      } finally {
        inflight.current = null;
      }
    })();
    inflight.current = run;
    return run;
  }, [client, limits, onCreated, persistLocally, userId]);

  const setDraft = useCallback(
    (next: Draft) => {
      latest.current = next;
      dirty.current = true;
      setDraftState(next);
      persistLocally(next);
      setSave({ kind: "dirty" });
      window.clearTimeout(timer.current);
      timer.current = window.setTimeout(() => void saveNow(), SAVE_DELAY_MS);
    },
    [persistLocally, saveNow],
  );

  // The server's copy moved on elsewhere (another tab saved): take it unless this tab has changes.
  useEffect(() => {
    if (experiment && !dirty.current && experiment.updated_at !== base.current && !inflight.current) {
      base.current = experiment.updated_at;
      const fresh = draftFromExperiment(experiment);
      latest.current = fresh;
      setDraftState(fresh);
    }
  }, [experiment]);

  useEffect(() => () => window.clearTimeout(timer.current), []);

  // Leaving with unsaved changes: they are in local storage, but say so.
  useEffect(() => {
    const warn = (event: BeforeUnloadEvent) => {
      if (dirty.current) event.preventDefault();
    };
    window.addEventListener("beforeunload", warn);
    return () => window.removeEventListener("beforeunload", warn);
  }, []);

  const discardLocal = useCallback(() => {
    writeStored(key, null);
    const fresh = experiment ? draftFromExperiment(experiment) : options.initial;
    latest.current = fresh;
    dirty.current = false;
    setDraftState(fresh);
    setRestored(false);
    setSave(experiment ? { kind: "saved", at: Date.now() } : { kind: "local" });
  }, [experiment, key, options.initial]);

  return {
    draft,
    setDraft,
    save,
    problems: [...problems, ...apiProblems],
    /** Save now (Start run waits for it); false when the draft cannot be saved. */
    flush: async () => {
      window.clearTimeout(timer.current);
      return saveNow();
    },
    restored,
    discardLocal,
    experimentId: experimentId.current,
  };
}
