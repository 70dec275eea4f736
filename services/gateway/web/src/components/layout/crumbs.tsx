import { createContext, useContext, useEffect, useState, type ReactNode } from "react";

export interface Crumb {
  label: string;
  to?: string;
  /** Ids are shown in the monospaced data font. */
  mono?: boolean;
}

const SetCrumbs = createContext<(crumbs: Crumb[]) => void>(() => undefined);
const Crumbs = createContext<Crumb[]>([]);

export function CrumbsProvider({ children }: { children: ReactNode }) {
  const [crumbs, setCrumbs] = useState<Crumb[]>([]);
  return (
    <SetCrumbs.Provider value={setCrumbs}>
      <Crumbs.Provider value={crumbs}>{children}</Crumbs.Provider>
    </SetCrumbs.Provider>
  );
}

/** A page says where it is: the header's breadcrumbs and the window title follow. */
export function usePageCrumbs(crumbs: Crumb[]): void {
  const set = useContext(SetCrumbs);
  const key = JSON.stringify(crumbs);
  useEffect(() => {
    set(crumbs);
    const last = crumbs[crumbs.length - 1];
    document.title = last ? `${last.label} · Influence Lab` : "Influence Lab";
    // The serialised crumbs are the dependency: a new array with the same content is no change.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key, set]);
}

export function useCrumbs(): Crumb[] {
  return useContext(Crumbs);
}
