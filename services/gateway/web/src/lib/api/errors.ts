/** The gateway's error answers, made readable: `{"detail": "text"}` for a refused
 * request, `{"detail": [{loc, msg}]}` for a body that failed validation (422). */

export interface FieldProblem {
  /** Dotted path inside the body, e.g. `training_data.3.answer` or `hyperparams.learning_rate`. */
  field: string;
  message: string;
}

export class ApiError extends Error {
  readonly status: number;
  readonly problems: FieldProblem[];
  readonly body: unknown;

  constructor(status: number, message: string, problems: FieldProblem[] = [], body: unknown = undefined) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.problems = problems;
    this.body = body;
  }

  /** The message for one field (exact path, or the first under it). */
  forField(field: string): string | undefined {
    const exact = this.problems.find((p) => p.field === field);
    if (exact) return exact.message;
    return this.problems.find((p) => p.field.startsWith(`${field}.`))?.message;
  }
}

interface ValidationItem {
  loc?: (string | number)[];
  msg?: string;
}

function isValidationList(detail: unknown): detail is ValidationItem[] {
  return Array.isArray(detail) && detail.every((d) => typeof d === "object" && d !== null);
}

/** Pydantic's "Value error, ids must be unique" reads better without its prefix. */
function cleanMessage(msg: string): string {
  return msg.replace(/^Value error, /, "").replace(/^Assertion failed, /, "");
}

export function problemsOf(detail: unknown): FieldProblem[] {
  if (!isValidationList(detail)) return [];
  return detail.map((d) => {
    const loc = (d.loc ?? []).filter((part, i) => !(i === 0 && (part === "body" || part === "query")));
    return { field: loc.join("."), message: cleanMessage(d.msg ?? "invalid value") };
  });
}

export function toApiError(status: number, body: unknown, fallback: string): ApiError {
  const detail = typeof body === "object" && body !== null && "detail" in body ? (body as { detail: unknown }).detail : undefined;
  if (typeof detail === "string") return new ApiError(status, detail, [], body);
  const problems = problemsOf(detail);
  if (problems.length > 0) {
    const first = problems[0]!;
    const message = first.field ? `${first.field}: ${first.message}` : first.message;
    return new ApiError(status, message, problems, body);
  }
  return new ApiError(status, fallback, [], body);
}

export function describeError(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof TypeError) return "The gateway could not be reached. Check the connection and retry.";
  if (error instanceof Error) return error.message;
  return "Something went wrong.";
}
