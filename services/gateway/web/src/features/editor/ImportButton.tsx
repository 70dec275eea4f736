import { Upload } from "lucide-react";
import { useId, useState } from "react";
import { api, unwrap, type Schemas } from "@/lib/api/client";
import { describeError } from "@/lib/api/errors";
import { newKey, type Row } from "./draft";

export type ImportReport = { file: string; imported: number; errors: Schemas["RowError"][]; failed?: string };

const FORMATS: Record<string, "jsonl" | "csv"> = { jsonl: "jsonl", json: "jsonl", ndjson: "jsonl", csv: "csv" };

/** A JSONL or CSV file read by the gateway's import parser; its rows are appended to the
 * page (also before the experiment is first saved), its per-line errors reported. */
export function ImportButton({
  target,
  label,
  onRows,
  onReport,
  maxBytes,
  existingIds,
}: {
  target: "training_data" | "eval_data";
  label: string;
  onRows: (rows: Row[]) => void;
  onReport: (report: ImportReport) => void;
  maxBytes: number | undefined;
  /** Ids already in the page, so the parser numbers new rows after them. */
  existingIds: string[];
}) {
  const id = useId();
  const [busy, setBusy] = useState(false);

  async function read(file: File) {
    const format = FORMATS[file.name.split(".").pop()?.toLowerCase() ?? ""];
    if (!format) {
      onReport({ file: file.name, imported: 0, errors: [], failed: "choose a .jsonl or .csv file" });
      return;
    }
    if (maxBytes && file.size > maxBytes * 0.9) {
      onReport({
        file: file.name,
        imported: 0,
        errors: [],
        failed: `the file is larger than this gateway accepts (${Math.round(maxBytes / 1e6)} MB)`,
      });
      return;
    }
    setBusy(true);
    try {
      const content = await file.text();
      const parsed = await unwrap(
        api.POST("/api/imports/parse", { body: { target, format, content, existing_ids: existingIds } }),
        "The file could not be read",
      );
      const items = target === "training_data" ? parsed.training_data : parsed.eval_data;
      const rows = items.map((item) => ({ key: newKey(), id: item.id, question: item.question, answer: item.answer ?? "" }));
      onRows(rows);
      onReport({ file: file.name, imported: rows.length, errors: parsed.errors });
    } catch (e) {
      onReport({ file: file.name, imported: 0, errors: [], failed: describeError(e) });
    } finally {
      setBusy(false);
    }
  }

  return (
    <label className={`btn btn-sm ${busy ? "busy" : ""}`} htmlFor={id}>
      <Upload /> {label}{" "}
      <span className="dim mono" style={{ fontSize: 10 }}>
        JSONL / CSV
      </span>
      <input
        id={id}
        type="file"
        className="sr-only"
        accept=".jsonl,.ndjson,.json,.csv,text/csv,application/json"
        disabled={busy}
        onChange={(e) => {
          const file = e.target.files?.[0];
          e.target.value = "";
          if (file) void read(file);
        }}
      />
    </label>
  );
}
