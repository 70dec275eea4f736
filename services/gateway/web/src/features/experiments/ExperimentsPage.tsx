import { Dialog, DropdownMenu } from "radix-ui";
import { Segmented } from "@/components/ui/Segmented";
import { Select } from "@/components/ui/Select";
import { ArrowDownUp, ChevronRight, Copy, FlaskConical, MoreHorizontal, Pencil, Plus, Search, Sparkles, Trash2 } from "lucide-react";
import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { Link, useNavigate } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { ConfirmDialog } from "@/components/ui/ConfirmDialog";
import { EmptyState, ErrorState, SkeletonRows } from "@/components/ui/Feedback";
import { ProgressBar } from "@/components/ui/ProgressBar";
import { StatusBadge } from "@/components/ui/StatusBadge";
import { useToast } from "@/components/ui/Toasts";
import { describeError } from "@/lib/api/errors";
import { formatNumber, formatRelative, shortId } from "@/lib/format";
import { isUnfinished } from "@/lib/runStatus";
import demoExperiment from "../../../../../../examples/demo/experiment.json";
import { useExperimentList, useExperimentMutations, type ExperimentCreate, type ExperimentSort, type ExperimentSummary } from "./api";
import "./experiments.css";

type StatusFilter = "all" | "running" | "completed" | "failed";

const SORTS: { value: ExperimentSort; label: string }[] = [
  { value: "updated", label: "Last updated" },
  { value: "name", label: "Name" },
  { value: "last_run_status", label: "Last run status" },
  { value: "created", label: "Created" },
];

function matchesFilter(e: ExperimentSummary, filter: StatusFilter): boolean {
  const status = e.last_run?.status;
  if (filter === "all") return true;
  if (filter === "running") return isUnfinished(status);
  return status === filter;
}

function useDebounced<T>(value: T, ms: number): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setDebounced(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

function RenameDialog({
  experiment,
  open,
  onOpenChange,
}: {
  experiment: ExperimentSummary;
  open: boolean;
  onOpenChange: (open: boolean) => void;
}) {
  const { update } = useExperimentMutations();
  const [name, setName] = useState(experiment.name);
  const [error, setError] = useState<string | null>(null);
  async function submit(event: FormEvent) {
    event.preventDefault();
    try {
      await update.mutateAsync({ id: experiment.id, body: { name } });
      onOpenChange(false);
    } catch (e) {
      setError(describeError(e));
    }
  }
  return (
    <Dialog.Root open={open} onOpenChange={onOpenChange}>
      <Dialog.Portal>
        <Dialog.Overlay className="overlay" />
        <Dialog.Content className="dialog">
          <Dialog.Title>Rename experiment</Dialog.Title>
          <Dialog.Description className="description">Runs keep their own copy of the configuration.</Dialog.Description>
          <form onSubmit={submit} className="col">
            <label className="field">
              <span className="field-label">Experiment name</span>
              <input
                className="input"
                value={name}
                onChange={(e) => setName(e.target.value)}
                autoFocus
                maxLength={200}
                aria-invalid={Boolean(error)}
              />
            </label>
            {error ? (
              <span className="field-error" role="alert">
                {error}
              </span>
            ) : null}
            <div className="actions">
              <Dialog.Close className="btn">Cancel</Dialog.Close>
              <button type="submit" className="btn btn-primary" disabled={!name.trim() || update.isPending}>
                Rename
              </button>
            </div>
          </form>
        </Dialog.Content>
      </Dialog.Portal>
    </Dialog.Root>
  );
}

function RowActions({ experiment }: { experiment: ExperimentSummary }) {
  const { duplicate, remove } = useExperimentMutations();
  const toast = useToast();
  const navigate = useNavigate();
  const [renaming, setRenaming] = useState(false);
  const [deleting, setDeleting] = useState(false);
  return (
    <div className="row-actions">
      <Link to={`/experiments/${experiment.id}`} className="icon-btn icon-btn-sm" aria-label={`Open ${experiment.name}`} title="Open">
        <ChevronRight />
      </Link>
      <button
        type="button"
        className="icon-btn icon-btn-sm"
        aria-label={`Duplicate ${experiment.name}`}
        title="Duplicate"
        onClick={async () => {
          try {
            const copy = await duplicate.mutateAsync(experiment.id);
            toast.show(
              <>
                Duplicated as <Link to={`/experiments/${copy.id}`}>{copy.name}</Link>
              </>,
            );
          } catch (e) {
            toast.show(describeError(e), "error");
          }
        }}
      >
        <Copy />
      </button>
      <DropdownMenu.Root>
        <DropdownMenu.Trigger asChild>
          <button type="button" className="icon-btn icon-btn-sm" aria-label={`More actions for ${experiment.name}`}>
            <MoreHorizontal />
          </button>
        </DropdownMenu.Trigger>
        <DropdownMenu.Portal>
          <DropdownMenu.Content className="menu" align="end">
            <DropdownMenu.Item className="menu-item" onSelect={() => navigate(`/experiments/${experiment.id}`)}>
              <FlaskConical /> Open
            </DropdownMenu.Item>
            <DropdownMenu.Item className="menu-item" onSelect={() => setRenaming(true)}>
              <Pencil /> Rename
            </DropdownMenu.Item>
            <DropdownMenu.Separator className="menu-separator" />
            <DropdownMenu.Item className="menu-item danger" onSelect={() => setDeleting(true)}>
              <Trash2 /> Delete
            </DropdownMenu.Item>
          </DropdownMenu.Content>
        </DropdownMenu.Portal>
      </DropdownMenu.Root>
      {renaming ? <RenameDialog experiment={experiment} open={renaming} onOpenChange={setRenaming} /> : null}
      {deleting ? (
        <ConfirmDialog
          open={deleting}
          onOpenChange={setDeleting}
          title={`Delete “${experiment.name}”?`}
          description="The experiment's data and settings are deleted. Its runs stay in the run history with their own copy of the configuration."
          confirmLabel="Delete experiment"
          onConfirm={async () => {
            try {
              await remove.mutateAsync(experiment.id);
              toast.show(`Deleted ${experiment.name}`);
            } catch (e) {
              toast.show(describeError(e), "error");
              throw e;
            }
          }}
        />
      ) : null}
    </div>
  );
}

function Stats({ items }: { items: ExperimentSummary[] }) {
  const running = items.filter((e) => isUnfinished(e.last_run?.status));
  const runs = items.reduce((sum, e) => sum + (e.run_count ?? 0), 0);
  const pairs = items.reduce((sum, e) => sum + e.training_pairs, 0);
  const completed = items.filter((e) => e.last_run?.status === "completed").length;
  const failed = items.filter((e) => e.last_run?.status === "failed").length;
  return (
    <div className="grid-4">
      <div className="panel stat-card">
        <div className="label">Active runs</div>
        <div className="value">{running.length}</div>
        <div className="sub">{running.length ? running.map((e) => e.name).join(", ") : "nothing training"}</div>
      </div>
      <div className="panel stat-card">
        <div className="label">Runs</div>
        <div className="value">{runs}</div>
        <div className="sub">
          last runs: {completed} completed · {failed} failed
        </div>
      </div>
      <div className="panel stat-card">
        <div className="label">Experiments</div>
        <div className="value">{items.length}</div>
        <div className="sub">{items.reduce((s, e) => s + e.eval_questions, 0)} evaluation questions in all</div>
      </div>
      <div className="panel stat-card">
        <div className="label">Training pairs</div>
        <div className="value">{pairs}</div>
        <div className="sub">across {items.length} experiments</div>
      </div>
    </div>
  );
}

/** The researcher's experiments: find, open, duplicate, rename, delete. */
export function ExperimentsPage() {
  usePageCrumbs([{ label: "Experiments" }]);
  const navigate = useNavigate();
  const toast = useToast();
  const [search, setSearch] = useState("");
  const [sort, setSort] = useState<ExperimentSort>("updated");
  const [filter, setFilter] = useState<StatusFilter>("all");
  const q = useDebounced(search, 200);
  const list = useExperimentList({ q, sort, order: sort === "name" ? "asc" : "desc" });
  const all = useExperimentList({ sort: "updated" });
  const { create } = useExperimentMutations();
  const searchBox = useRef<HTMLInputElement>(null);
  const items = useMemo(() => (list.data ?? []).filter((e) => matchesFilter(e, filter)), [list.data, filter]);
  const counts = useMemo(() => {
    const data = list.data ?? [];
    return {
      all: data.length,
      running: data.filter((e) => matchesFilter(e, "running")).length,
      completed: data.filter((e) => matchesFilter(e, "completed")).length,
      failed: data.filter((e) => matchesFilter(e, "failed")).length,
    };
  }, [list.data]);

  useEffect(() => {
    function onKey(event: KeyboardEvent) {
      const target = event.target as HTMLElement;
      if (target.closest("input, textarea, select, [contenteditable]")) return;
      if (event.key === "/") {
        event.preventDefault();
        searchBox.current?.focus();
      } else if (event.key === "n" || event.key === "N") {
        navigate("/experiments/new");
      }
    }
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [navigate]);

  async function createDemo() {
    try {
      const experiment = await create.mutateAsync(demoExperiment as ExperimentCreate);
      navigate(`/experiments/${experiment.id}`);
    } catch (e) {
      toast.show(describeError(e), "error");
    }
  }

  return (
    <div className="page">
      <div className="page-header">
        <h1>Experiments</h1>
        {list.data ? <span className="count">{list.data.length}</span> : null}
        <span className="grow" />
        <button type="button" className="btn btn-primary" onClick={() => navigate("/experiments/new")}>
          <Plus /> New experiment
        </button>
      </div>
      {all.data && all.data.length > 0 ? <Stats items={all.data} /> : null}
      <div className="toolbar">
        <div className="search-box">
          <Search />
          <input
            ref={searchBox}
            type="search"
            className="input"
            placeholder="Search experiments"
            aria-label="Search experiments"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
          />
          <span className="kbd">/</span>
        </div>
        <Segmented
          label="Last run status"
          value={filter}
          options={(["all", "running", "completed", "failed"] as const).map((value) => ({
            value,
            label: (
              <>
                {value[0]!.toUpperCase() + value.slice(1)} <span className="dim num">{counts[value]}</span>
              </>
            ),
          }))}
          onChange={setFilter}
        />
        <span className="grow" />
        <label className="row muted" htmlFor="experiment-sort">
          <ArrowDownUp size={13} /> Sort
        </label>
        <Select id="experiment-sort" width={170} value={sort} options={SORTS} onChange={setSort} />
      </div>
      <section className="panel" aria-label="Experiment list">
        {list.isPending ? (
          <SkeletonRows rows={6} label="Loading experiments" />
        ) : list.isError ? (
          <ErrorState error={list.error} onRetry={() => void list.refetch()} />
        ) : (list.data ?? []).length === 0 && !q ? (
          <EmptyState title="No experiments yet" icon={<FlaskConical />}>
            <p>Start from the demo: four invented facts beside four everyday ones, and the questions that should trace back to them.</p>
            <div className="row" style={{ marginTop: 6 }}>
              <button type="button" className="btn btn-primary" onClick={createDemo} disabled={create.isPending}>
                <Sparkles /> Create the demo experiment
              </button>
              <button type="button" className="btn" onClick={() => navigate("/experiments/new")}>
                Start from scratch
              </button>
            </div>
          </EmptyState>
        ) : items.length === 0 ? (
          <EmptyState title="Nothing matches">
            <p>
              No experiment matches “{q}”{filter !== "all" ? ` with a ${filter} last run` : ""}.
            </p>
          </EmptyState>
        ) : (
          <div className="panel-scroll">
            <table className="table experiments-table">
              <thead>
                <tr>
                  <th>Name</th>
                  <th className="right">Pairs</th>
                  <th className="right">Eval</th>
                  <th>Model</th>
                  <th>Last run</th>
                  <th className="right">Runs</th>
                  <th className="right">Final loss</th>
                  <th>Updated</th>
                  <th aria-label="Actions" />
                </tr>
              </thead>
              <tbody>
                {items.map((e) => (
                  <tr key={e.id}>
                    <td className="name-cell">
                      <Link to={`/experiments/${e.id}`} className="experiment-link">
                        {e.name}
                      </Link>
                      {e.description ? <div className="desc truncate">{e.description}</div> : null}
                    </td>
                    <td className="right num">{e.training_pairs}</td>
                    <td className="right num">{e.eval_questions}</td>
                    <td className="mono model-cell" title={e.model_id}>
                      {e.model_id.split("/").pop()}
                    </td>
                    <td>
                      {e.last_run ? (
                        <div className="row">
                          <StatusBadge status={e.last_run.status} />
                          <Link to={`/runs/${e.last_run.id}`} className="mono dim">
                            {shortId(e.last_run.id)}
                          </Link>
                          {e.last_run.status === "running" ? (
                            <ProgressBar
                              value={e.last_run.progress}
                              label={`Progress of run ${shortId(e.last_run.id)}`}
                              className="mini-progress"
                            />
                          ) : null}
                        </div>
                      ) : (
                        <span className="dim">never run</span>
                      )}
                    </td>
                    <td className="right num">{e.run_count ?? 0}</td>
                    <td className="right num">{formatNumber(e.last_run?.loss, 3)}</td>
                    <td className="muted" title={e.updated_at}>
                      {formatRelative(e.updated_at)}
                    </td>
                    <td className="right">
                      <RowActions experiment={e} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {list.data && list.data.length > 0 ? (
          <div className="table-footer">
            Showing {items.length} of {list.data.length}
            <span className="grow" />
            <span className="dim">/ to search · N new experiment</span>
          </div>
        ) : null}
      </section>
    </div>
  );
}
