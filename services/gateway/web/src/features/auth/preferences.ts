import type { QueryClient } from "@tanstack/react-query";
import { api } from "@/lib/api/client";
import { queryKeys } from "@/lib/queryKeys";
import type { Theme } from "@/lib/theme";
import type { User } from "./api";

/** The theme is remembered per user: saved on the account when someone is signed in. */
export async function saveTheme(client: QueryClient, theme: Theme): Promise<void> {
  const user = client.getQueryData<User | null>(queryKeys.me);
  if (!user) return;
  const { data, response } = await api.PATCH("/api/auth/me", { body: { theme } });
  if (response.ok && data) client.setQueryData(queryKeys.me, data);
}
