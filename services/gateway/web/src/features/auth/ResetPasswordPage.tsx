import { useState, type FormEvent } from "react";
import { Link, useSearchParams } from "react-router";
import { Field } from "@/components/ui/Field";
import { InlineAlert } from "@/components/ui/Feedback";
import { ApiError, describeError } from "@/lib/api/errors";
import { ForgotPassword } from "./ForgotPassword";
import { confirmPasswordReset } from "./flows";
import { PasswordInput } from "./PasswordInput";
import { AuthCard } from "./AuthCard";
import "./auth.css";

/** The page the reset mail links to: choose a new password (every session ends). */
export function ResetPasswordPage() {
  const [params] = useSearchParams();
  const token = params.get("token");
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [busy, setBusy] = useState(false);
  const [done, setDone] = useState(false);
  const [problem, setProblem] = useState<{ field?: string; general?: string }>({});

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (password !== confirm) {
      setProblem({ field: "The two passwords differ." });
      return;
    }
    setBusy(true);
    setProblem({});
    try {
      await confirmPasswordReset(token ?? "", password);
      setDone(true);
    } catch (e) {
      const field = e instanceof ApiError ? e.forField("new_password") : undefined;
      setProblem(field ? { field } : { general: describeError(e) });
    } finally {
      setBusy(false);
    }
  }

  return (
    <AuthCard title="Influence Lab">
      {!token ? (
        <ForgotPassword initialEmail="" onBack={() => window.location.assign("/signin")} />
      ) : done ? (
        <>
          <InlineAlert tone="success">Your password is changed. Every session was signed out.</InlineAlert>
          <Link className="btn btn-primary btn-lg btn-block" to="/signin">
            Sign in
          </Link>
        </>
      ) : (
        <form className="auth-form" onSubmit={submit} noValidate>
          <h2>Choose a new password</h2>
          {problem.general ? <InlineAlert>{problem.general}</InlineAlert> : null}
          <Field label="New password" error={problem.field} hint="At least 10 characters.">
            {({ id, describedBy, invalid }) => (
              <PasswordInput
                large
                id={id}
                autoComplete="new-password"
                value={password}
                onChange={(e) => setPassword(e.target.value)}
                aria-describedby={describedBy}
                aria-invalid={invalid}
                autoFocus
              />
            )}
          </Field>
          <Field label="Repeat the new password">
            {({ id }) => (
              <PasswordInput large id={id} autoComplete="new-password" value={confirm} onChange={(e) => setConfirm(e.target.value)} />
            )}
          </Field>
          <button type="submit" className="btn btn-primary btn-lg btn-block" disabled={busy || !password}>
            Set new password
          </button>
        </form>
      )}
    </AuthCard>
  );
}
