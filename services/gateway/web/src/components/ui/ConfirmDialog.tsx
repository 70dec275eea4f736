import { AlertDialog } from "radix-ui";
import { useState, type ReactNode } from "react";

interface ConfirmDialogProps {
  /** The element that opens the dialog (a button); or control it with open/onOpenChange. */
  trigger?: ReactNode;
  open?: boolean;
  onOpenChange?: (open: boolean) => void;
  title: string;
  description: ReactNode;
  confirmLabel: string;
  cancelLabel?: string;
  /** Resolves when done; a rejection keeps the dialog open (the caller shows the error). */
  onConfirm: () => Promise<unknown> | void;
  destructive?: boolean;
}

/** "Are you sure?" for what cannot be undone (delete, cancel a run). */
export function ConfirmDialog({
  trigger,
  open: controlledOpen,
  onOpenChange,
  title,
  description,
  confirmLabel,
  cancelLabel = "Keep",
  onConfirm,
  destructive = true,
}: ConfirmDialogProps) {
  const [ownOpen, setOwnOpen] = useState(false);
  const open = controlledOpen ?? ownOpen;
  const setOpen = (value: boolean) => {
    setOwnOpen(value);
    onOpenChange?.(value);
  };
  const [busy, setBusy] = useState(false);
  return (
    <AlertDialog.Root open={open} onOpenChange={setOpen}>
      {trigger ? <AlertDialog.Trigger asChild>{trigger}</AlertDialog.Trigger> : null}
      <AlertDialog.Portal>
        <AlertDialog.Overlay className="overlay" />
        <AlertDialog.Content className="dialog">
          <AlertDialog.Title>{title}</AlertDialog.Title>
          <AlertDialog.Description className="description">{description}</AlertDialog.Description>
          <div className="actions">
            <AlertDialog.Cancel className="btn">{cancelLabel}</AlertDialog.Cancel>
            <button
              type="button"
              className={`btn ${destructive ? "btn-danger-solid" : "btn-primary"}`}
              disabled={busy}
              onClick={async () => {
                setBusy(true);
                try {
                  await onConfirm();
                  setOpen(false);
                } catch {
                  /* stays open; the caller has said what went wrong */
                } finally {
                  setBusy(false);
                }
              }}
            >
              {confirmLabel}
            </button>
          </div>
        </AlertDialog.Content>
      </AlertDialog.Portal>
    </AlertDialog.Root>
  );
}
