import { ChevronRight } from "lucide-react";
import { useMemo, useState } from "react";
import { useFieldSpecs } from "@/lib/contract";
import { useMethods, type MethodArgument, type MethodInfo } from "@/lib/methods";
import type { Draft, Hyperparams, InfluenceArgs, PredictionSettings, Problem } from "./draft";
import { NumberField, SelectField, Toggle } from "./fields";

const SCHEDULERS: Record<string, string> = {
  constant: "Constant",
  constant_with_warmup: "Constant with warmup",
  linear: "Linear decay",
  cosine: "Cosine",
  cosine_with_restarts: "Cosine with restarts",
  polynomial: "Polynomial",
};

const SPEED_TONE: Record<string, string> = { fast: "badge-success", balanced: "badge-info", precise: "badge-warning" };

/** The hyperparameters that are numbers (one number field each). */
type NumericHyperparam = {
  [K in keyof Hyperparams]-?: NonNullable<Hyperparams[K]> extends number ? K : never;
}[keyof Hyperparams];

interface ConfigPanelProps {
  draft: Draft;
  onChange: (draft: Draft) => void;
  problems: Problem[];
  defaultModel: string;
  knownModels: string[];
  tier: string | null;
}

function Fold({ title, children, defaultOpen = false }: { title: string; children: React.ReactNode; defaultOpen?: boolean }) {
  const [open, setOpen] = useState(defaultOpen);
  return (
    <div className="fold">
      <button type="button" className="fold-toggle" aria-expanded={open} onClick={() => setOpen((o) => !o)}>
        <ChevronRight /> {title}
      </button>
      {open ? <div className="fold-body">{children}</div> : null}
    </div>
  );
}

function argLabel(name: string): string {
  const text = name.replace(/_/g, " ");
  return text[0]!.toUpperCase() + text.slice(1);
}

function MethodArgs({
  method,
  args,
  onChange,
}: {
  method: MethodInfo;
  args: Record<string, string | number | boolean | null>;
  onChange: (args: Record<string, string | number | boolean | null>) => void;
}) {
  const set = (name: string, value: string | number | boolean | null | undefined) => {
    const next = { ...args };
    if (value === undefined) delete next[name];
    else next[name] = value;
    onChange(next);
  };
  return (
    <div className="config-grid">
      {method.args.map((arg: MethodArgument) => {
        const value = args[arg.name];
        const fallback = arg.default as string | number | boolean | null;
        if (arg.choices && arg.choices.length > 0) {
          return (
            <SelectField
              key={arg.name}
              label={argLabel(arg.name)}
              value={String(value ?? fallback ?? "")}
              options={arg.choices.map((c) => ({ value: c, label: c }))}
              onChange={(v) => set(arg.name, v === String(fallback) ? undefined : v)}
              hint={arg.description}
            />
          );
        }
        if (arg.type === "boolean") {
          return (
            <Toggle
              key={arg.name}
              label={argLabel(arg.name)}
              checked={Boolean(value ?? fallback)}
              onChange={(v) => set(arg.name, v === fallback ? undefined : v)}
              hint={arg.description}
            />
          );
        }
        if (arg.type === "string") {
          return (
            <div key={arg.name} className="field">
              <label className="field-label">
                {argLabel(arg.name)}
                <input
                  className="input mono"
                  value={String(value ?? "")}
                  placeholder={fallback == null ? "" : String(fallback)}
                  onChange={(e) => set(arg.name, e.target.value || undefined)}
                />
              </label>
              <span className="field-hint">{arg.description}</span>
            </div>
          );
        }
        return (
          <NumberField
            key={arg.name}
            label={argLabel(arg.name)}
            spec={{
              name: arg.name,
              type: arg.type === "integer" ? "integer" : "number",
              default: fallback ?? undefined,
              minimum: arg.minimum ?? undefined,
              maximum: arg.maximum ?? undefined,
              exclusiveMinimum: arg.exclusive_minimum ?? undefined,
              exclusiveMaximum: arg.exclusive_maximum ?? undefined,
            }}
            value={typeof value === "number" ? value : undefined}
            scientific={arg.type === "number"}
            onChange={(v) => set(arg.name, v)}
            hint={arg.description}
          />
        );
      })}
    </div>
  );
}

function MethodPicker({ draft, onChange }: { draft: Draft; onChange: (draft: Draft) => void }) {
  const methods = useMethods();
  const [open, setOpen] = useState<string | null>(null);
  const list = methods.data ?? [];
  function toggle(id: string, on: boolean) {
    const chosen = on ? [...draft.influenceMethods, id] : draft.influenceMethods.filter((m) => m !== id);
    // Keep the order the gateway lists them in.
    onChange({ ...draft, influenceMethods: list.map((m) => m.id).filter((m) => chosen.includes(m)) });
  }
  function setArgs(id: string, args: InfluenceArgs[string]) {
    const next = { ...draft.influenceArgs };
    if (Object.keys(args).length === 0) delete next[id];
    else next[id] = args;
    onChange({ ...draft, influenceArgs: next });
  }
  return (
    <fieldset className="methods">
      <legend>
        Influence methods <span className="dim">· computed after training, per evaluation question × training pair</span>
      </legend>
      {methods.isPending ? <div className="dim">Loading methods…</div> : null}
      {list.map((m) => {
        const checked = draft.influenceMethods.includes(m.id);
        return (
          <div key={m.id} className={`method-row ${checked ? "checked" : ""}`}>
            <label className="method-main">
              <input
                type="checkbox"
                aria-label={m.label}
                aria-describedby={`method-${m.id}-desc`}
                checked={checked}
                onChange={(e) => toggle(m.id, e.target.checked)}
              />
              <span className="method-name">{m.label}</span>
              <span className={`badge ${SPEED_TONE[m.speed] ?? ""}`}>{m.speed}</span>
              <span className="method-desc" id={`method-${m.id}-desc`} title={m.description}>
                {m.description}
              </span>
            </label>
            <button
              type="button"
              className="icon-btn icon-btn-sm"
              aria-expanded={open === m.id}
              aria-label={`${m.label} arguments`}
              title="Arguments and variants"
              onClick={() => setOpen(open === m.id ? null : m.id)}
            >
              <ChevronRight style={{ transform: open === m.id ? "rotate(90deg)" : undefined, transition: "transform 160ms" }} />
            </button>
            {open === m.id ? (
              <div className="method-detail">
                <div className="variants">
                  {m.variants.map((v) => (
                    <div key={v.id}>
                      <span className="badge badge-mono">{v.id}</span> <span className="muted">{v.description}</span>
                    </div>
                  ))}
                </div>
                <MethodArgs method={m} args={draft.influenceArgs[m.id] ?? {}} onChange={(args) => setArgs(m.id, args)} />
              </div>
            ) : null}
          </div>
        );
      })}
    </fieldset>
  );
}

/** Every setting a run takes: the model, the hyperparameters (advanced ones folded), the
 * influence methods with their arguments, and prediction tracking. Defaults and ranges
 * come from the API's own description. */
export function ConfigPanel({ draft, onChange, problems, defaultModel, knownModels, tier }: ConfigPanelProps) {
  const hp = useFieldSpecs("Hyperparams");
  const ps = useFieldSpecs("PredictionSettings");
  const rs = useFieldSpecs("RunSpec");
  const h = draft.hyperparams;
  const p = draft.predictions;
  const error = (field: string) => problems.find((x) => x.field === field || x.field?.startsWith(`${field}.`))?.message;
  const setH = <K extends keyof Hyperparams>(name: K, value: Hyperparams[K] | undefined) => {
    const next = { ...draft.hyperparams };
    if (value === undefined) delete next[name];
    else next[name] = value;
    onChange({ ...draft, hyperparams: next });
  };
  /** The number field of one hyperparameter; ``withError`` shows the API's message for it under it. */
  const hpField = (name: NumericHyperparam, label: string, { scientific = false, withError = false } = {}) => (
    <NumberField
      label={label}
      spec={hp[name]}
      value={h[name]}
      onChange={(v) => setH(name, v)}
      scientific={scientific}
      error={withError ? error(`hyperparams.${name}`) : undefined}
    />
  );
  const setP = <K extends keyof PredictionSettings>(name: K, value: PredictionSettings[K] | undefined) => {
    const next = { ...draft.predictions };
    if (value === undefined) delete next[name];
    else next[name] = value;
    onChange({ ...draft, predictions: next });
  };
  const models = useMemo(() => [...new Set([defaultModel, ...knownModels, draft.modelId])], [defaultModel, knownModels, draft.modelId]);
  const [custom, setCustom] = useState(false);

  return (
    <div className="config">
      <div className="config-model">
        <div className="field">
          <div className="field-label">
            <label htmlFor="model-select">Model</label>
            {tier ? <span className="badge badge-success">tier {tier}</span> : null}
          </div>
          {custom ? (
            <div className="row">
              <input
                id="model-select"
                className="input mono"
                placeholder="org/name"
                value={draft.modelId}
                onChange={(e) => onChange({ ...draft, modelId: e.target.value })}
                aria-invalid={Boolean(error("model_id"))}
                role="combobox"
                aria-expanded={false}
                aria-autocomplete="none"
              />
              <button type="button" className="btn btn-sm" onClick={() => setCustom(false)}>
                List
              </button>
            </div>
          ) : (
            <select
              id="model-select"
              className="select mono"
              value={draft.modelId}
              onChange={(e) => {
                if (e.target.value === "__custom") setCustom(true);
                else onChange({ ...draft, modelId: e.target.value });
              }}
            >
              {models.map((m) => (
                <option key={m} value={m}>
                  {m}
                  {m === defaultModel ? " (default)" : ""}
                </option>
              ))}
              <option value="__custom">Other model id…</option>
            </select>
          )}
          {error("model_id") ? (
            <span className="field-error" role="alert">
              {error("model_id")}
            </span>
          ) : null}
        </div>
        <Toggle
          label="QLoRA"
          checked={h.quantization === "4bit"}
          onChange={(on) => setH("quantization", on ? "4bit" : undefined)}
          hint={h.quantization === "4bit" ? "4-bit NF4 base" : "off"}
        />
      </div>
      <div className="config-grid">
        {hpField("learning_rate", "Learning rate", { scientific: true, withError: true })}
        {hpField("num_epochs", "Epochs", { withError: true })}
        {hpField("lora_rank", "LoRA rank", { withError: true })}
        {hpField("batch_size", "Batch size", { withError: true })}
        <SelectField
          label="LR scheduler"
          value={h.lr_scheduler ?? String(hp.lr_scheduler?.default ?? "constant")}
          options={(hp.lr_scheduler?.enum ?? Object.keys(SCHEDULERS)).map((v) => ({ value: v, label: SCHEDULERS[v] ?? v }))}
          onChange={(v) => setH("lr_scheduler", v as Hyperparams["lr_scheduler"])}
        />
        {hpField("warmup_ratio", "Warmup ratio", { withError: true })}
      </div>
      <Fold title="Advanced">
        <div className="config-grid">
          {hpField("lora_alpha", "LoRA alpha")}
          {hpField("lora_dropout", "LoRA dropout")}
          {hpField("weight_decay", "Weight decay")}
          {hpField("max_seq_length", "Max sequence length")}
          {hpField("gradient_accumulation_steps", "Gradient accumulation")}
          {hpField("checkpoint_interval", "Checkpoint every (epochs)")}
          {hpField("logging_steps", "Log every (steps)")}
          {hpField("seed", "Seed")}
          <NumberField
            label="Few-shot examples"
            spec={rs.few_shot_k}
            value={draft.fewShotK}
            onChange={(v) => onChange({ ...draft, fewShotK: v ?? null })}
            hint="training pairs shown to the base model"
          />
          <NumberField
            label="Max new tokens"
            spec={rs.max_new_tokens}
            value={draft.maxNewTokens}
            onChange={(v) => onChange({ ...draft, maxNewTokens: v ?? null })}
          />
          <div className="field span-2">
            <label className="field-label" htmlFor="target-modules">
              LoRA target modules
            </label>
            <input
              id="target-modules"
              className="input mono"
              placeholder="q_proj, v_proj"
              value={(h.lora_target_modules ?? []).join(", ")}
              onChange={(e) => {
                const modules = e.target.value
                  .split(",")
                  .map((m) => m.trim())
                  .filter(Boolean);
                setH("lora_target_modules", modules.length ? modules : undefined);
              }}
            />
          </div>
        </div>
      </Fold>
      <MethodPicker draft={draft} onChange={onChange} />
      <Fold title="Prediction tracking">
        <div className="config-grid">
          <Toggle
            label="Track predictions"
            checked={p.enabled ?? true}
            onChange={(v) => setP("enabled", v)}
            hint="answer sampled questions during training"
          />
          <NumberField
            label="Sampled questions"
            spec={ps.sample_count}
            value={p.sample_count}
            onChange={(v) => setP("sample_count", v)}
            error={error("predictions.sample_count")}
          />
          <SelectField
            label="Sample every"
            value={p.frequency ?? "epoch"}
            options={[
              { value: "epoch", label: "Epoch" },
              { value: "steps", label: "N steps" },
            ]}
            onChange={(v) => setP("frequency", v as PredictionSettings["frequency"])}
          />
          <NumberField
            label="Step interval"
            spec={ps.step_interval}
            value={p.step_interval}
            onChange={(v) => setP("step_interval", v)}
            disabled={(p.frequency ?? "epoch") !== "steps"}
            error={error("predictions.step_interval")}
          />
          <SelectField
            label="Precision"
            value={p.precision ?? "auto"}
            options={(ps.precision?.enum ?? ["auto", "float32", "bfloat16"]).map((v) => ({ value: v, label: v }))}
            onChange={(v) => setP("precision", v as PredictionSettings["precision"])}
            hint="auto: bfloat16 where the CPU computes it natively"
          />
        </div>
      </Fold>
    </div>
  );
}
