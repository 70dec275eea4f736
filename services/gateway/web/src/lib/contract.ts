/** Defaults and ranges of the run settings, read from the gateway's own OpenAPI document
 * (the pydantic models' JSON Schema), so the editor's fields cannot drift from what the
 * API accepts: one source of truth, on the server. */
import { useQuery } from "@tanstack/react-query";

/** What the schema says of a value: its default and the values allowed (JSON Schema's names). */
interface Constraints {
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  enum?: string[];
}

export interface FieldSpec extends Constraints {
  name: string;
  type: "number" | "integer" | "string" | "boolean" | "array";
}

interface JsonSchema extends Constraints {
  type?: string;
  anyOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
}

interface OpenApiDocument {
  components?: { schemas?: Record<string, JsonSchema> };
}

export function fieldSpecs(document: OpenApiDocument, schemaName: string): Record<string, FieldSpec> {
  const properties = document.components?.schemas?.[schemaName]?.properties ?? {};
  const specs: Record<string, FieldSpec> = {};
  for (const [name, raw] of Object.entries(properties)) {
    // `X | None` is anyOf [X, null]: the field's own constraints are on X.
    const schema = raw.anyOf?.find((s) => s.type !== "null") ?? raw;
    specs[name] = {
      name,
      type: (schema.type as FieldSpec["type"]) ?? "string",
      default: "default" in raw ? raw.default : schema.default,
      minimum: schema.minimum,
      maximum: schema.maximum,
      exclusiveMinimum: schema.exclusiveMinimum,
      exclusiveMaximum: schema.exclusiveMaximum,
      enum: schema.enum,
    };
  }
  return specs;
}

/** Whether `value` is allowed by `spec`; the message says the range when it is not. */
export function checkNumber(spec: FieldSpec | undefined, value: number): string | null {
  if (!Number.isFinite(value)) return "must be a number";
  if (!spec) return null;
  if (spec.type === "integer" && !Number.isInteger(value)) return "must be a whole number";
  if (spec.minimum != null && value < spec.minimum) return `at least ${spec.minimum}`;
  if (spec.exclusiveMinimum != null && value <= spec.exclusiveMinimum) return `above ${spec.exclusiveMinimum}`;
  if (spec.maximum != null && value > spec.maximum) return `at most ${spec.maximum}`;
  if (spec.exclusiveMaximum != null && value >= spec.exclusiveMaximum) return `below ${spec.exclusiveMaximum}`;
  return null;
}

export function rangeText(spec: FieldSpec | undefined): string {
  if (!spec) return "";
  const low = spec.minimum != null ? `≥ ${spec.minimum}` : spec.exclusiveMinimum != null ? `> ${spec.exclusiveMinimum}` : null;
  const high = spec.maximum != null ? `≤ ${spec.maximum}` : spec.exclusiveMaximum != null ? `< ${spec.exclusiveMaximum}` : null;
  return [low, high].filter(Boolean).join(", ");
}

export function useContract() {
  return useQuery({
    queryKey: ["openapi"],
    queryFn: async (): Promise<OpenApiDocument> => {
      const response = await fetch("/openapi.json", { credentials: "same-origin" });
      if (!response.ok) throw new Error(`the API description did not load (${response.status})`);
      return (await response.json()) as OpenApiDocument;
    },
    staleTime: Number.POSITIVE_INFINITY,
  });
}

export function useFieldSpecs(schemaName: string): Record<string, FieldSpec> {
  const contract = useContract();
  return contract.data ? fieldSpecs(contract.data, schemaName) : {};
}
