import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";

export type Theme = "dark" | "light";

const STORAGE_KEY = "inflab.theme";

function initialTheme(): Theme {
  const fromDocument = document.documentElement.dataset.theme;
  return fromDocument === "light" ? "light" : "dark";
}

interface ThemeApi {
  theme: Theme;
  /** The user's choice: applied and saved (onChange). */
  setTheme: (theme: Theme) => void;
  /** The account's saved choice, arriving with the user: applied, not saved again. */
  adopt: (theme: Theme) => void;
  toggle: () => void;
}

const ThemeContext = createContext<ThemeApi | null>(null);

/** Dark first. The choice is applied to <html data-theme>, kept in this browser for the
 * next first paint, and saved to the signed-in user's account by `onChange`. */
export function ThemeProvider({ children, onChange }: { children: ReactNode; onChange?: (theme: Theme) => void }) {
  const [theme, setThemeState] = useState<Theme>(initialTheme);

  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    try {
      localStorage.setItem(STORAGE_KEY, theme);
    } catch {
      /* private mode: the theme still applies for this page */
    }
  }, [theme]);

  const setTheme = useCallback(
    (next: Theme) => {
      setThemeState(next);
      onChange?.(next);
    },
    [onChange],
  );
  const api = useMemo(
    () => ({ theme, setTheme, adopt: setThemeState, toggle: () => setTheme(theme === "dark" ? "light" : "dark") }),
    [theme, setTheme],
  );
  return <ThemeContext.Provider value={api}>{children}</ThemeContext.Provider>;
}

export function useTheme(): ThemeApi {
  const api = useContext(ThemeContext);
  if (!api) throw new Error("useTheme outside ThemeProvider");
  return api;
}
