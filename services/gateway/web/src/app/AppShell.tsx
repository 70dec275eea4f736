import { useQuery, useQueryClient } from "@tanstack/react-query";
import { DropdownMenu } from "radix-ui";
import { ChevronDown, FlaskConical, LayoutGrid, LogOut, Moon, Settings, SlidersHorizontal, Sun } from "lucide-react";
import { Fragment, useEffect } from "react";
import { Link, NavLink, Outlet, useNavigate, useNavigation } from "react-router";
import { Logo } from "@/components/layout/Logo";
import { useCrumbs } from "@/components/layout/crumbs";
import { useMe, signOut } from "@/features/auth/api";
import { useExperimentList } from "@/features/experiments/api";
import { api } from "@/lib/api/client";
import { isUnfinished } from "@/lib/runStatus";
import { useTheme } from "@/lib/theme";
import "@/components/layout/shell.css";

function initials(name: string): string {
  const parts = name.split(/[\s@._-]+/).filter(Boolean);
  return ((parts[0]?.[0] ?? "?") + (parts[1]?.[0] ?? "")).toUpperCase();
}

function Breadcrumbs() {
  const crumbs = useCrumbs();
  return (
    <nav className="crumbs" aria-label="Breadcrumbs">
      {crumbs.map((crumb, i) => {
        const last = i === crumbs.length - 1;
        return (
          <Fragment key={`${crumb.label}-${i}`}>
            {i > 0 ? <span className="sep">/</span> : null}
            {last || !crumb.to ? (
              <span className={`truncate ${last ? "current" : ""} ${crumb.mono ? "mono" : ""}`} aria-current={last ? "page" : undefined}>
                {crumb.label}
              </span>
            ) : (
              <Link to={crumb.to} className="truncate">
                {crumb.label}
              </Link>
            )}
          </Fragment>
        );
      })}
    </nav>
  );
}

function AccountMenu() {
  const me = useMe();
  const navigate = useNavigate();
  const client = useQueryClient();
  const user = me.data;
  if (!user) return null;
  const name = user.display_name || user.email;
  return (
    <DropdownMenu.Root>
      <DropdownMenu.Trigger asChild>
        <button type="button" className="account-btn" aria-label="Account">
          <span className="avatar" aria-hidden="true">
            {initials(name)}
          </span>
          <ChevronDown />
        </button>
      </DropdownMenu.Trigger>
      <DropdownMenu.Portal>
        <DropdownMenu.Content className="menu" align="end" sideOffset={6}>
          <DropdownMenu.Label className="menu-label">
            Signed in as
            <div style={{ color: "var(--text)", fontSize: "var(--text-sm)" }}>{user.email}</div>
          </DropdownMenu.Label>
          <DropdownMenu.Separator className="menu-separator" />
          <DropdownMenu.Item className="menu-item" onSelect={() => navigate("/settings")}>
            <Settings /> Settings
          </DropdownMenu.Item>
          <DropdownMenu.Item
            className="menu-item"
            onSelect={async () => {
              try {
                await signOut();
              } finally {
                client.clear();
                client.setQueryData(["auth", "me"], null);
                navigate("/signin", { replace: true });
              }
            }}
          >
            <LogOut /> Sign out
          </DropdownMenu.Item>
        </DropdownMenu.Content>
      </DropdownMenu.Portal>
    </DropdownMenu.Root>
  );
}

function ThemeToggle() {
  const { theme, toggle } = useTheme();
  return (
    <button
      type="button"
      className="icon-btn bordered"
      aria-label="Toggle theme"
      title={`Switch to ${theme === "dark" ? "light" : "dark"} theme`}
      onClick={toggle}
    >
      {theme === "dark" ? <Sun /> : <Moon />}
    </button>
  );
}

function StackStatus() {
  const ready = useQuery({
    queryKey: ["readyz"],
    queryFn: async () => {
      const { data, response } = await api.GET("/readyz");
      // 503 still carries which dependency is not ready.
      return { ok: response.ok, checks: data?.checks ?? {} };
    },
    refetchInterval: 30_000,
  });
  const failing = Object.entries(ready.data?.checks ?? {}).filter(([, v]) => v !== "ok");
  return (
    <div className="row" title={failing.map(([k, v]) => `${k}: ${v}`).join("\n") || "Gateway, Postgres and NATS answer"}>
      <span className={`status-dot ${ready.data?.ok ? "completed" : ready.data ? "failed" : ""}`} />
      {ready.data ? (ready.data.ok ? "Gateway ready" : `Not ready: ${failing.map(([k]) => k).join(", ")}`) : "Checking…"}
    </div>
  );
}

function Sidebar() {
  const experiments = useExperimentList({ sort: "updated" });
  const items = experiments.data ?? [];
  const active = items.filter((e) => isUnfinished(e.last_run?.status)).length;
  return (
    <aside className="shell-sidebar">
      <nav aria-label="Main" className="col" style={{ gap: 2 }}>
        <NavLink to="/" end className={({ isActive }) => `nav-link ${isActive ? "active" : ""}`}>
          <LayoutGrid /> Dashboard
        </NavLink>
        <NavLink to="/experiments" className={({ isActive }) => `nav-link ${isActive ? "active" : ""}`}>
          <FlaskConical /> Experiments
          {experiments.data ? <span className="count">{items.length}</span> : null}
        </NavLink>
        <NavLink to="/settings" className={({ isActive }) => `nav-link ${isActive ? "active" : ""}`}>
          <SlidersHorizontal /> Settings
        </NavLink>
      </nav>
      {items.length > 0 ? (
        <>
          <div className="sidebar-heading">Recent</div>
          {items.slice(0, 6).map((e) => (
            <Link key={e.id} to={`/experiments/${e.id}`} className="recent-link" title={e.name}>
              <span className={`status-dot ${e.last_run?.status ?? ""}`} />
              <span className="truncate">{e.name}</span>
            </Link>
          ))}
        </>
      ) : null}
      <div className="sidebar-footer">
        <StackStatus />
        <div className="row">
          <span className={`status-dot ${active ? "running" : ""}`} />
          {active} {active === 1 ? "run" : "runs"} active
        </div>
      </div>
    </aside>
  );
}

function NavigationProgress() {
  const navigation = useNavigation();
  if (navigation.state === "idle") return null;
  return (
    <div
      className="progress"
      role="progressbar"
      aria-label="Loading page"
      style={{ position: "fixed", top: 0, left: 0, right: 0, height: 2, zIndex: 100, borderRadius: 0 }}
    >
      <span style={{ width: "60%" }} />
    </div>
  );
}

export function AppShell() {
  const me = useMe();
  const { adopt } = useTheme();
  const saved = me.data?.theme;
  useEffect(() => {
    if (saved === "dark" || saved === "light") adopt(saved);
  }, [saved, adopt]);

  return (
    <div className="shell">
      <NavigationProgress />
      <header className="shell-header">
        <Link to="/" className="shell-brand" aria-label="Influence Lab home">
          <Logo />
          Influence Lab
        </Link>
        <Breadcrumbs />
        <span className="spacer" />
        <ThemeToggle />
        <AccountMenu />
      </header>
      <Sidebar />
      <main className="shell-main" id="main">
        <Outlet />
      </main>
    </div>
  );
}
