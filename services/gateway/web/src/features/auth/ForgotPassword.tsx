import { useState, type FormEvent } from "react";
import { Field } from "@/components/ui/Field";
import { InlineAlert } from "@/components/ui/Feedback";
import { describeError } from "@/lib/api/errors";
import { requestPasswordReset } from "./flows";

/** Ask for a password-reset mail. The answer is the same whether or not an account exists. */
export function ForgotPassword({ initialEmail, onBack }: { initialEmail: string; onBack: () => void }) {
  const [email, setEmail] = useState(initialEmail);
  const [sent, setSent] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await requestPasswordReset(email);
      setSent(true);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="auth-form" onSubmit={submit} noValidate>
      <h2>Reset your password</h2>
      {sent ? (
        <InlineAlert tone="success">
          If an account exists for <strong>{email}</strong>, a link to choose a new password is on its way.
        </InlineAlert>
      ) : (
        <>
          {error ? <InlineAlert>{error}</InlineAlert> : null}
          <Field label="Email">
            {({ id }) => (
              <input
                id={id}
                className="input input-lg"
                type="email"
                autoComplete="email"
                value={email}
                onChange={(e) => setEmail(e.target.value)}
                autoFocus
              />
            )}
          </Field>
          <button type="submit" className="btn btn-primary btn-lg btn-block" disabled={busy || !email}>
            Send reset link
          </button>
        </>
      )}
      <button type="button" className="auth-link-btn" onClick={onBack} style={{ alignSelf: "center" }}>
        Back to sign in
      </button>
    </form>
  );
}
