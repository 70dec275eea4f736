import { QueryClientProvider, useQueryClient } from "@tanstack/react-query";
import { Tooltip } from "radix-ui";
import { useCallback } from "react";
import { RouterProvider } from "react-router";
import { CrumbsProvider } from "@/components/layout/crumbs";
import { ToastProvider } from "@/components/ui/Toasts";
import { saveTheme } from "@/features/auth/preferences";
import { queryClient } from "@/lib/queryClient";
import { ThemeProvider, type Theme } from "@/lib/theme";
import { router } from "./router";

function Themed({ children }: { children: React.ReactNode }) {
  const client = useQueryClient();
  const onChange = useCallback((theme: Theme) => void saveTheme(client, theme), [client]);
  return <ThemeProvider onChange={onChange}>{children}</ThemeProvider>;
}

export function App() {
  return (
    <QueryClientProvider client={queryClient}>
      <Themed>
        <Tooltip.Provider delayDuration={300}>
          <ToastProvider>
            <CrumbsProvider>
              <RouterProvider router={router} />
            </CrumbsProvider>
          </ToastProvider>
        </Tooltip.Provider>
      </Themed>
    </QueryClientProvider>
  );
}
