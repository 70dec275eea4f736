import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { Select } from "@/components/ui/Select";
import { Check, Copy, KeyRound, LogOut, Moon, Sun } from "lucide-react";
import { useState, type FormEvent } from "react";
import { useNavigate } from "react-router";
import { usePageCrumbs } from "@/components/layout/crumbs";
import { ConfirmDialog } from "@/components/ui/ConfirmDialog";
import { EmptyState, ErrorState, InlineAlert, SkeletonRows } from "@/components/ui/Feedback";
import { useToast } from "@/components/ui/Toasts";
import { useMe } from "@/features/auth/api";
import { changePassword, signOutEverywhere } from "@/features/auth/flows";
import { PasswordInput } from "@/features/auth/PasswordInput";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { ApiError, describeError } from "@/lib/api/errors";
import { formatDateTime, formatRelative } from "@/lib/format";
import { queryKeys } from "@/lib/queryKeys";
import { useTheme } from "@/lib/theme";
import "./settings.css";

type TokenScope = "full" | "read" | "submit";

const SCOPES: { value: TokenScope; label: string; hint: string }[] = [
  { value: "submit", label: "Submit", hint: "submit runs and read those runs; nothing else" },
  { value: "read", label: "Read", hint: "read experiments, runs and results" },
  { value: "full", label: "Full", hint: "everything this account can do, except managing tokens" },
];

function Profile() {
  const me = useMe();
  const client = useQueryClient();
  const toast = useToast();
  const [name, setName] = useState<string | null>(null);
  const save = useMutation({
    mutationFn: (display_name: string) => unwrap(api.PATCH("/api/auth/me", { body: { display_name } }), "Could not save"),
    onSuccess: (user) => {
      client.setQueryData(queryKeys.me, user);
      setName(null);
      toast.show("Display name saved.");
    },
  });
  const user = me.data;
  if (!user) return null;
  const value = name ?? user.display_name ?? "";
  return (
    <section className="panel" aria-label="Profile">
      <div className="panel-header">
        <h2>Profile</h2>
      </div>
      <form
        className="panel-body settings-form"
        onSubmit={(e) => {
          e.preventDefault();
          save.mutate(value);
        }}
      >
        <div className="field">
          <label className="field-label" htmlFor="display-name">
            Display name
          </label>
          <div className="row">
            <input
              id="display-name"
              className="input"
              value={value}
              maxLength={100}
              onChange={(e) => setName(e.target.value)}
              placeholder="How the app greets you"
            />
            <button type="submit" className="btn" disabled={name == null || save.isPending}>
              Save
            </button>
          </div>
          {save.isError ? (
            <span className="field-error" role="alert">
              {describeError(save.error)}
            </span>
          ) : null}
        </div>
        <dl className="details-list">
          <dt>Email</dt>
          <dd>
            {user.email}{" "}
            {user.email_verified ? (
              <span className="badge badge-success">verified</span>
            ) : (
              <span className="badge badge-warning">not verified</span>
            )}
          </dd>
          <dt>Sign-in</dt>
          <dd>{user.sign_in_methods.join(", ") || "–"}</dd>
          <dt>Since</dt>
          <dd>{formatDateTime(user.created_at)}</dd>
        </dl>
      </form>
    </section>
  );
}

function Appearance() {
  const { theme, setTheme } = useTheme();
  return (
    <section className="panel" aria-label="Appearance">
      <div className="panel-header">
        <h2>Appearance</h2>
        <span className="meta">remembered on your account</span>
      </div>
      <div className="panel-body">
        <div className="segmented" role="radiogroup" aria-label="Theme">
          {(["dark", "light"] as const).map((t) => (
            <button key={t} type="button" role="radio" aria-checked={theme === t} onClick={() => setTheme(t)}>
              {t === "dark" ? <Moon size={12} /> : <Sun size={12} />} {t === "dark" ? "Dark" : "Light"}
            </button>
          ))}
        </div>
      </div>
    </section>
  );
}

function NewTokenSecret({ token, onDone }: { token: Schemas["ApiTokenCreated"]; onDone: () => void }) {
  const [copied, setCopied] = useState(false);
  return (
    <div className="token-secret" role="status">
      <strong>Copy your new token now: it is shown this once.</strong>
      <div className="row">
        <code className="secret" aria-label="New API token">
          {token.token}
        </code>
        <button
          type="button"
          className="btn btn-sm"
          onClick={async () => {
            await navigator.clipboard.writeText(token.token);
            setCopied(true);
          }}
        >
          {copied ? <Check /> : <Copy />} {copied ? "Copied" : "Copy"}
        </button>
        <button type="button" className="btn btn-sm btn-ghost" onClick={onDone}>
          Done
        </button>
      </div>
      <span className="muted">
        Send it as <code>Authorization: Bearer …</code> (HTTP) or in the NATS submission header.
      </span>
    </div>
  );
}

function Tokens() {
  const client = useQueryClient();
  const toast = useToast();
  const tokens = useQuery({ queryKey: queryKeys.tokens, queryFn: () => unwrap(api.GET("/api/tokens")) });
  const [name, setName] = useState("");
  const [scope, setScope] = useState<TokenScope>("submit");
  const [days, setDays] = useState("90");
  const [created, setCreated] = useState<Schemas["ApiTokenCreated"] | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const create = useMutation({
    mutationFn: () =>
      unwrap(
        api.POST("/api/tokens", { body: { name, scope, ...(days ? { expires_in_days: Number(days) } : {}) } }),
        "Could not create the token",
      ),
    onSuccess: (token) => {
      setCreated(token);
      setName("");
      void client.invalidateQueries({ queryKey: queryKeys.tokens });
    },
    onError: (e) => setProblem(e instanceof ApiError ? (e.forField("name") ?? e.message) : describeError(e)),
  });
  const revoke = useMutation({
    mutationFn: (id: string) => unwrap(api.DELETE("/api/tokens/{token_id}", { params: { path: { token_id: id } } }), "Could not revoke"),
    onSuccess: () => {
      void client.invalidateQueries({ queryKey: queryKeys.tokens });
      toast.show("Token revoked.");
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    setProblem(null);
    create.mutate();
  }

  const list = tokens.data ?? [];
  return (
    <section className="panel" aria-label="API tokens">
      <div className="panel-header">
        <KeyRound size={14} />
        <h2>Personal API tokens</h2>
        <span className="meta">for pipelines: submit runs over HTTP or NATS in your name</span>
      </div>
      <div className="panel-body col" style={{ gap: 12 }}>
        <form className="token-form" onSubmit={submit}>
          <div className="field grow">
            <label className="field-label" htmlFor="token-name">
              Token name
            </label>
            <input
              id="token-name"
              className="input"
              placeholder="nightly eval pipeline"
              value={name}
              onChange={(e) => setName(e.target.value)}
              maxLength={200}
              aria-invalid={Boolean(problem)}
            />
          </div>
          <div className="field">
            <label className="field-label" htmlFor="token-scope">
              Scope
            </label>
            <Select id="token-scope" width={130} value={scope} options={SCOPES} onChange={setScope} />
          </div>
          <div className="field">
            <label className="field-label" htmlFor="token-days">
              Expires in (days)
            </label>
            <input
              id="token-days"
              className="input mono"
              type="number"
              min={1}
              max={3650}
              value={days}
              onChange={(e) => setDays(e.target.value)}
              placeholder="never"
              style={{ width: 120 }}
            />
          </div>
          <button type="submit" className="btn btn-primary" disabled={!name.trim() || create.isPending} style={{ alignSelf: "end" }}>
            Create token
          </button>
        </form>
        <span className="field-hint">{SCOPES.find((s) => s.value === scope)?.hint}</span>
        {problem ? <InlineAlert>{problem}</InlineAlert> : null}
        {created ? <NewTokenSecret token={created} onDone={() => setCreated(null)} /> : null}
      </div>
      {tokens.isPending ? (
        <SkeletonRows rows={2} label="Loading tokens" />
      ) : tokens.isError ? (
        <ErrorState error={tokens.error} onRetry={() => void tokens.refetch()} />
      ) : list.length === 0 ? (
        <EmptyState title="No tokens yet" />
      ) : (
        <table className="table" aria-label="Tokens">
          <thead>
            <tr>
              <th>Name</th>
              <th>Token</th>
              <th>Scope</th>
              <th>Created</th>
              <th>Expires</th>
              <th>Last used</th>
              <th aria-label="Actions" />
            </tr>
          </thead>
          <tbody>
            {list.map((t) => {
              const expired = t.expires_at != null && new Date(t.expires_at).getTime() < Date.now();
              return (
                <tr key={t.id}>
                  <td>{t.name}</td>
                  <td className="mono dim">{t.prefix}…</td>
                  <td>
                    <span className="badge">{t.scope}</span>
                  </td>
                  <td className="muted">{formatRelative(t.created_at)}</td>
                  <td className="muted">{t.expires_at ? (expired ? "expired" : formatRelative(t.expires_at)) : "never"}</td>
                  <td className="muted">{t.last_used_at ? formatRelative(t.last_used_at) : "never"}</td>
                  <td className="right">
                    {t.revoked_at ? (
                      <span className="badge">revoked</span>
                    ) : (
                      <ConfirmDialog
                        trigger={
                          <button type="button" className="btn btn-sm btn-danger">
                            Revoke
                          </button>
                        }
                        title={`Revoke “${t.name}”?`}
                        description="Requests with this token fail from now on; a pipeline using it stops working."
                        confirmLabel="Revoke token"
                        onConfirm={() => revoke.mutateAsync(t.id)}
                      />
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** A password input with its label and, below it, the API's message for it or a hint.
 * The id is also its autocomplete token ("current-password", "new-password"). */
function PasswordField({
  id,
  label,
  value,
  onChange,
  error,
  hint,
}: {
  id: "current-password" | "new-password";
  label: string;
  value: string;
  onChange: (value: string) => void;
  error: string | undefined;
  hint?: string;
}) {
  return (
    <div className="field">
      <label className="field-label" htmlFor={id}>
        {label}
      </label>
      <PasswordInput id={id} autoComplete={id} value={value} onChange={(e) => onChange(e.target.value)} aria-invalid={Boolean(error)} />
      {error ? (
        <span className="field-error" role="alert">
          {error}
        </span>
      ) : hint ? (
        <span className="field-hint">{hint}</span>
      ) : null}
    </div>
  );
}

function Security() {
  const me = useMe();
  const navigate = useNavigate();
  const client = useQueryClient();
  const toast = useToast();
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [problem, setProblem] = useState<{ current?: string; next?: string; general?: string }>({});
  const hasPassword = me.data?.sign_in_methods.includes("password");

  async function submit(event: FormEvent) {
    event.preventDefault();
    setProblem({});
    try {
      await changePassword(current, next);
      setCurrent("");
      setNext("");
      toast.show("Password changed. Other sessions were signed out.");
    } catch (e) {
      if (e instanceof ApiError) {
        const c = e.forField("current_password");
        const n = e.forField("new_password");
        if (c || n) return setProblem({ current: c, next: n });
        if (e.message.toLowerCase().includes("current")) return setProblem({ current: e.message });
      }
      setProblem({ general: describeError(e) });
    }
  }

  return (
    <section className="panel" aria-label="Security">
      <div className="panel-header">
        <h2>Security</h2>
      </div>
      <div className="panel-body col" style={{ gap: 14 }}>
        {hasPassword ? (
          <form className="settings-form" onSubmit={submit}>
            <h3>Change password</h3>
            {problem.general ? <InlineAlert>{problem.general}</InlineAlert> : null}
            <div className="grid-2">
              <PasswordField id="current-password" label="Current password" value={current} onChange={setCurrent} error={problem.current} />
              <PasswordField
                id="new-password"
                label="New password"
                value={next}
                onChange={setNext}
                error={problem.next}
                hint="At least 10 characters."
              />
            </div>
            <div>
              <button type="submit" className="btn" disabled={!current || !next}>
                Change password
              </button>
            </div>
          </form>
        ) : (
          <p className="muted">This account signs in with {me.data?.sign_in_methods.join(", ")}; it has no password.</p>
        )}
        <div className="row">
          <div className="grow">
            <h3>Sign out everywhere</h3>
            <p className="muted">
              Ends every session of this account, on every device, this one too. API tokens keep working until revoked.
            </p>
          </div>
          <ConfirmDialog
            trigger={
              <button type="button" className="btn btn-danger">
                <LogOut /> Sign out everywhere
              </button>
            }
            title="Sign out of every session?"
            description="Every browser and API client signed in to this account must sign in again."
            confirmLabel="Sign out everywhere"
            onConfirm={async () => {
              await signOutEverywhere();
              client.clear();
              client.setQueryData(queryKeys.me, null);
              navigate("/signin", { replace: true });
            }}
          />
        </div>
      </div>
    </section>
  );
}

/** The account: display name, theme, personal API tokens, password and sessions. */
export function SettingsPage() {
  usePageCrumbs([{ label: "Settings" }]);
  return (
    <div className="page settings-page">
      <div className="page-header">
        <h1>Settings</h1>
      </div>
      <div className="settings-grid">
        <Profile />
        <Appearance />
      </div>
      <Tokens />
      <Security />
    </div>
  );
}
