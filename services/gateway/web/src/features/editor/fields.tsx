import { useEffect, useId, useState, type ReactNode } from "react";
import { checkNumber, rangeText, type FieldSpec } from "@/lib/contract";
import { formatLr } from "@/lib/format";

interface NumberFieldProps {
  label: string;
  spec: FieldSpec | undefined;
  value: number | null | undefined;
  onChange: (value: number | undefined) => void;
  /** The learning rate reads best as 1e-3: a textbox rather than a spinbutton. */
  scientific?: boolean;
  error?: string | undefined;
  hint?: ReactNode;
  disabled?: boolean;
}

function display(value: number | null | undefined, scientific: boolean): string {
  if (value == null) return "";
  return scientific ? formatLr(value) : String(value);
}

/** A number with the contract's default shown as the placeholder and its range checked as
 * it is typed; an empty field means "the default". */
export function NumberField({ label, spec, value, onChange, scientific = false, error, hint, disabled }: NumberFieldProps) {
  const id = useId();
  const [text, setText] = useState(display(value, scientific));
  const [local, setLocal] = useState<string | null>(null);
  useEffect(() => {
    // Follow outside changes (a reload, a duplicate) unless the field is being edited.
    setText((current) => (Number(current) === value || (current === "" && value == null) ? current : display(value, scientific)));
  }, [value, scientific]);
  const integer = spec?.type === "integer";
  const shownError = error ?? local ?? undefined;
  const placeholder = spec?.default != null ? display(spec.default as number, scientific) : undefined;

  return (
    <div className="field">
      <label className="field-label" htmlFor={id}>
        {label}
      </label>
      <input
        id={id}
        className="input mono"
        type={scientific ? "text" : "number"}
        inputMode={integer ? "numeric" : "decimal"}
        step={integer ? 1 : "any"}
        min={spec?.minimum}
        max={spec?.maximum}
        placeholder={placeholder}
        value={text}
        disabled={disabled}
        aria-invalid={Boolean(shownError)}
        aria-describedby={`${id}-note`}
        onChange={(e) => {
          const raw = e.target.value;
          setText(raw);
          if (raw.trim() === "") {
            setLocal(null);
            onChange(undefined);
            return;
          }
          const parsed = Number(raw);
          const problem = checkNumber(spec, parsed);
          setLocal(problem);
          if (!problem) onChange(parsed);
        }}
      />
      <span id={`${id}-note`} className={shownError ? "field-error" : "field-hint"}>
        {shownError ?? hint ?? (spec ? `${rangeText(spec)}${placeholder ? ` · default ${placeholder}` : ""}` : "")}
      </span>
    </div>
  );
}

interface SelectFieldProps {
  label: string;
  value: string;
  options: readonly { value: string; label: string }[];
  onChange: (value: string) => void;
  hint?: ReactNode;
  disabled?: boolean;
}

export function SelectField({ label, value, options, onChange, hint, disabled }: SelectFieldProps) {
  const id = useId();
  return (
    <div className="field">
      <label className="field-label" htmlFor={id}>
        {label}
      </label>
      <select id={id} className="select" value={value} disabled={disabled} onChange={(e) => onChange(e.target.value)}>
        {options.map((o) => (
          <option key={o.value} value={o.value}>
            {o.label}
          </option>
        ))}
      </select>
      {hint ? <span className="field-hint">{hint}</span> : null}
    </div>
  );
}

export function Toggle({
  label,
  checked,
  onChange,
  hint,
}: {
  label: string;
  checked: boolean;
  onChange: (value: boolean) => void;
  hint?: ReactNode;
}) {
  const id = useId();
  return (
    <div className="toggle-field">
      <button
        id={id}
        type="button"
        role="switch"
        aria-checked={checked}
        aria-label={label}
        className="switch"
        onClick={() => onChange(!checked)}
      >
        <span />
      </button>
      <label htmlFor={id} className="toggle-label">
        {label}
        {hint ? <span className="field-hint">{hint}</span> : null}
      </label>
    </div>
  );
}
