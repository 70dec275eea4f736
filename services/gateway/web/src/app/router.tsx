import { createBrowserRouter, type RouteObject } from "react-router";
import { RequireAuth } from "@/features/auth/RequireAuth";
import { PageSkeleton } from "./PageSkeleton";
import { RouteError } from "./RouteError";

function BlankPage() {
  return <div style={{ minHeight: "100%", background: "var(--bg-gradient)" }} />;
}

/** Every page is its own chunk (loaded when first visited); the shell is in the main one. */
const routes: RouteObject[] = [
  {
    path: "/signin",
    HydrateFallback: BlankPage,
    lazy: async () => ({ Component: (await import("@/features/auth/SignInPage")).SignInPage }),
  },
  {
    path: "/verify-email",
    HydrateFallback: BlankPage,
    lazy: async () => ({ Component: (await import("@/features/auth/VerifyEmailPage")).VerifyEmailPage }),
  },
  {
    path: "/reset-password",
    HydrateFallback: BlankPage,
    lazy: async () => ({ Component: (await import("@/features/auth/ResetPasswordPage")).ResetPasswordPage }),
  },
  {
    path: "/",
    errorElement: <RouteError />,
    HydrateFallback: () => <PageSkeleton full />,
    lazy: async () => {
      const { AppShell } = await import("./AppShell");
      return {
        Component: () => (
          <RequireAuth fallback={<PageSkeleton full />}>
            <AppShell />
          </RequireAuth>
        ),
      };
    },
    children: [
      {
        index: true,
        lazy: async () => ({ Component: (await import("./routes/DashboardPage")).DashboardPage }),
      },
      {
        path: "experiments",
        lazy: async () => ({ Component: (await import("@/features/experiments/ExperimentsPage")).ExperimentsPage }),
      },
      {
        path: "experiments/:experimentId",
        lazy: async () => ({ Component: (await import("./routes/ExperimentPage")).EditorPage }),
      },
      {
        path: "runs/:runId",
        lazy: async () => ({ Component: (await import("./routes/RunPage")).RunPage }),
      },
      {
        path: "benchmarks/:runId",
        lazy: async () => ({ Component: (await import("@/features/benchmarks/BenchmarkPage")).BenchmarkPage }),
      },
      {
        path: "compare",
        lazy: async () => ({ Component: (await import("./routes/ComparePage")).ComparePage }),
      },
      {
        path: "settings",
        lazy: async () => ({ Component: (await import("@/features/settings/SettingsPage")).SettingsPage }),
      },
      {
        path: "*",
        lazy: async () => ({ Component: (await import("./NotFoundPage")).NotFoundPage }),
      },
    ],
  },
];

export const router = createBrowserRouter(routes);
