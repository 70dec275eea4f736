import { GripVertical, Plus, Trash2 } from "lucide-react";
import { useRef, useState, type ClipboardEvent, type KeyboardEvent, type ReactNode } from "react";
import { emptyRow, moveRow, moveRowTo, newKey, rowTokens, type Problem, type Row } from "./draft";
import { parsePastedRows } from "./paste";

/** How many rows are drawn at first; long data sets render more on request. */
const PAGE = 150;

export interface RowsTableProps {
  kind: "training" | "evaluation";
  rows: Row[];
  onChange: (rows: Row[]) => void;
  problems: Problem[];
  /** Per row (by its id), what the last run's models answered: drawn as small markers. */
  markers?: (row: Row) => ReactNode;
  readOnly?: boolean;
}

const TEXT = {
  training: { question: "Question", answer: "Answer", noun: "training pair", answerHeader: "Answer" },
  evaluation: { question: "Question", answer: "Reference answer", noun: "evaluation question", answerHeader: "Reference answer" },
} as const;

function CellError({ id, message }: { id: string; message: string | undefined }) {
  if (!message) return null;
  return (
    <span id={id} className="cell-error" role="alert">
      {message}
    </span>
  );
}

/** Training pairs or evaluation questions as editable rows: type, paste many at once from
 * a spreadsheet, reorder (drag the handle, or Alt+↑/↓), delete. */
export function RowsTable({ kind, rows, onChange, problems, markers, readOnly = false }: RowsTableProps) {
  const text = TEXT[kind];
  const [shown, setShown] = useState(PAGE);
  const [dragKey, setDragKey] = useState<string | null>(null);
  const [dropKey, setDropKey] = useState<string | null>(null);
  const focusAfter = useRef<string | null>(null);
  const byRow = new Map<string, Problem[]>();
  for (const p of problems) if (p.rowKey) byRow.set(p.rowKey, [...(byRow.get(p.rowKey) ?? []), p]);

  function update(key: string, column: "question" | "answer", value: string) {
    onChange(rows.map((r) => (r.key === key ? { ...r, [column]: value } : r)));
  }

  function onPaste(event: ClipboardEvent<HTMLTextAreaElement>, row: Row) {
    const pasted = parsePastedRows(event.clipboardData.getData("text/plain"));
    if (!pasted || pasted.length === 0) return;
    event.preventDefault();
    const at = rows.findIndex((r) => r.key === row.key);
    const created = pasted.map((p) => ({ key: newKey(), id: null, question: p.question, answer: p.answer }));
    const replaceCurrent = !row.question.trim() && !row.answer.trim();
    const next = [...rows];
    next.splice(replaceCurrent ? at : at + 1, replaceCurrent ? 1 : 0, ...created);
    onChange(next);
    setShown((s) => Math.max(s, next.length));
  }

  function onKey(event: KeyboardEvent<HTMLTextAreaElement>, row: Row) {
    if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      event.preventDefault();
      focusAfter.current = `${row.key}:${(event.target as HTMLTextAreaElement).dataset.column}`;
      onChange(moveRow(rows, row.key, event.key === "ArrowUp" ? -1 : 1));
    }
  }

  function addRow() {
    const row = emptyRow();
    onChange([...rows, row]);
    setShown((s) => Math.max(s, rows.length + 1));
    focusAfter.current = `${row.key}:question`;
  }

  const visible = rows.slice(0, shown);

  return (
    <div className="rows-table-wrap">
      <table className="table rows-table">
        <thead>
          <tr>
            <th className="idx" aria-label="Row" />
            <th>{text.question}</th>
            <th>{text.answerHeader}</th>
            {markers ? <th>Last run</th> : null}
            <th className="right">Tok</th>
            <th aria-label="Actions" />
          </tr>
        </thead>
        <tbody>
          {visible.map((row, index) => {
            const rowProblems = byRow.get(row.key) ?? [];
            const qError = rowProblems.find((p) => p.column === "question")?.message;
            const aError = rowProblems.find((p) => p.column === "answer")?.message;
            const n = index + 1;
            return (
              <tr
                key={row.key}
                className={`${dragKey === row.key ? "dragging" : ""} ${dropKey === row.key ? "drop-target" : ""}`}
                onDragOver={(e) => {
                  if (!dragKey) return;
                  e.preventDefault();
                  setDropKey(row.key);
                }}
                onDrop={(e) => {
                  e.preventDefault();
                  if (dragKey) onChange(moveRowTo(rows, dragKey, row.key));
                  setDragKey(null);
                  setDropKey(null);
                }}
              >
                <td className="idx">
                  <span className="row-number">{n}</span>
                  {!readOnly ? (
                    <span
                      className="drag-handle"
                      draggable
                      title="Drag to reorder (or Alt+↑/↓ in a cell)"
                      aria-hidden="true"
                      onDragStart={(e) => {
                        setDragKey(row.key);
                        e.dataTransfer.effectAllowed = "move";
                        e.dataTransfer.setData("text/plain", row.key);
                      }}
                      onDragEnd={() => {
                        setDragKey(null);
                        setDropKey(null);
                      }}
                    >
                      <GripVertical />
                    </span>
                  ) : null}
                </td>
                {(["question", "answer"] as const).map((column) => {
                  const error = column === "question" ? qError : aError;
                  const errorId = `${row.key}-${column}-error`;
                  return (
                    <td key={column} className={`cell-${column}`}>
                      <textarea
                        ref={(el) => {
                          if (el && focusAfter.current === `${row.key}:${column}`) {
                            focusAfter.current = null;
                            el.focus();
                          }
                        }}
                        className={`cell-input ${column === "answer" ? "mono" : ""}`}
                        rows={1}
                        aria-label={`${column === "question" ? text.question : text.answer} ${n}`}
                        aria-invalid={Boolean(error)}
                        aria-describedby={error ? errorId : undefined}
                        data-column={column}
                        value={row[column]}
                        readOnly={readOnly}
                        placeholder={column === "answer" && kind === "evaluation" ? "optional" : undefined}
                        onChange={(e) => update(row.key, column, e.target.value)}
                        onPaste={column === "question" ? (e) => onPaste(e, row) : undefined}
                        onKeyDown={(e) => onKey(e, row)}
                      />
                      <CellError id={errorId} message={error} />
                    </td>
                  );
                })}
                {markers ? <td className="markers-cell">{markers(row)}</td> : null}
                <td className="right tok num">{rowTokens(row)}</td>
                <td className="right">
                  {!readOnly ? (
                    <button
                      type="button"
                      className="icon-btn icon-btn-sm"
                      aria-label={`Delete ${text.noun} ${n}`}
                      title="Delete"
                      onClick={() => onChange(rows.filter((r) => r.key !== row.key))}
                    >
                      <Trash2 />
                    </button>
                  ) : null}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
      {rows.length > shown ? (
        <button type="button" className="btn btn-sm btn-ghost show-more" onClick={() => setShown((s) => s + PAGE * 4)}>
          Show {Math.min(PAGE * 4, rows.length - shown)} more of {rows.length - shown} hidden rows
        </button>
      ) : null}
      {!readOnly ? (
        <button type="button" className="new-row" onClick={addRow}>
          <Plus /> New row <span className="dim">· paste many rows from a spreadsheet into a question cell</span>
        </button>
      ) : null}
    </div>
  );
}
