import type { ReactNode } from "react";

export interface SelectOption<T extends string> {
  value: T;
  label: ReactNode;
}

interface SelectProps<T extends string> {
  id: string;
  value: T;
  options: readonly SelectOption<T>[];
  onChange: (value: T) => void;
  /** In pixels: the select's fixed width. */
  width?: number;
}

/** A native select styled like the app's inputs, over a list of typed options. */
export function Select<T extends string>({ id, value, options, onChange, width }: SelectProps<T>) {
  return (
    <select
      id={id}
      className="select"
      style={width != null ? { width } : undefined}
      value={value}
      onChange={(e) => onChange(e.target.value as T)}
    >
      {options.map((o) => (
        <option key={o.value} value={o.value}>
          {o.label}
        </option>
      ))}
    </select>
  );
}
