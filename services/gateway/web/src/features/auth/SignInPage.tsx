import { useState, type FormEvent, type KeyboardEvent } from "react";
import { Navigate, useNavigate, useSearchParams } from "react-router";
import { Field } from "@/components/ui/Field";
import { InlineAlert } from "@/components/ui/Feedback";
import { ApiError, describeError } from "@/lib/api/errors";
import { register, signIn, useAcceptSignIn, useMe, useProviders } from "./api";
import { resendVerification } from "./flows";
import { ForgotPassword } from "./ForgotPassword";
import { GoogleIcon } from "./GoogleIcon";
import { PasswordInput } from "./PasswordInput";
import { rememberNext, safeNext } from "./next";
import { AuthCard } from "./AuthCard";
import "./auth.css";

type Mode = "signin" | "create";

interface Problems {
  email?: string | undefined;
  password?: string | undefined;
  general?: string | undefined;
}

/** Where an error belongs: next to its field when the API names one, else above the form. */
function problemsFrom(error: unknown): Problems {
  if (error instanceof ApiError) {
    const email = error.forField("email");
    const password = error.forField("password");
    if (email || password) return { email, password };
    const text = error.message.toLowerCase();
    if (error.status === 422 && text.includes("password")) return { password: error.message };
    if (error.status === 422 && text.includes("email")) return { email: error.message };
    if (error.status === 409) return { email: error.message };
  }
  return { general: describeError(error) };
}

export function SignInPage() {
  const [params] = useSearchParams();
  const next = safeNext(params.get("next"));
  const me = useMe();
  const providers = useProviders();
  const navigate = useNavigate();
  const accept = useAcceptSignIn();
  const [mode, setMode] = useState<Mode>(params.get("mode") === "create" ? "create" : "signin");
  const [forgot, setForgot] = useState(false);
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [busy, setBusy] = useState(false);
  const [problems, setProblems] = useState<Problems>({});
  const [verifySent, setVerifySent] = useState<string | null>(null);
  const [resent, setResent] = useState(false);

  if (me.data) return <Navigate to={next} replace />;

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setProblems({});
    try {
      if (mode === "signin") {
        accept(await signIn(email, password));
        navigate(next, { replace: true });
      } else {
        const outcome = await register(email, password);
        if (outcome.kind === "verify") {
          setVerifySent(outcome.email);
        } else {
          accept(outcome.signedIn);
          navigate(next, { replace: true });
        }
      }
    } catch (error) {
      setProblems(problemsFrom(error));
    } finally {
      setBusy(false);
    }
  }

  function switchTo(target: Mode) {
    setMode(target);
    setProblems({});
    setForgot(false);
  }

  function onTabKey(event: KeyboardEvent) {
    if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
      const target: Mode = mode === "signin" ? "create" : "signin";
      switchTo(target);
      document.getElementById(`auth-tab-${target}`)?.focus();
    }
  }

  const submitLabel = mode === "signin" ? "Sign in" : "Create account";

  return (
    <AuthCard
      title="Influence Lab"
      footer={
        <div className="auth-footer-tabs">
          <div className="segmented" role="tablist" aria-label="Account" onKeyDown={onTabKey}>
            {(["signin", "create"] as const).map((value) => (
              <button
                key={value}
                id={`auth-tab-${value}`}
                type="button"
                role="tab"
                aria-selected={mode === value && !verifySent}
                aria-controls="auth-panel"
                tabIndex={mode === value ? 0 : -1}
                data-state={mode === value ? "active" : "inactive"}
                onClick={() => {
                  setVerifySent(null);
                  switchTo(value);
                }}
              >
                {value === "signin" ? "Sign in" : "Create account"}
              </button>
            ))}
          </div>
        </div>
      }
      after={
        <p className="auth-fineprint">Self-hosted instance · Sessions are kept on the server; runs keep going when you close the tab.</p>
      }
    >
      <p className="auth-tagline">
        Fine-tune small language models on your own question–answer pairs and trace every answer back to the training pairs that shaped it.
      </p>

      {verifySent ? (
        <>
          <InlineAlert tone="success">
            We sent a verification link to <strong>{verifySent}</strong>. Open it to finish creating your account; it signs you in.
          </InlineAlert>
          <button
            type="button"
            className="auth-link-btn"
            style={{ alignSelf: "flex-start" }}
            disabled={resent}
            onClick={async () => {
              await resendVerification(verifySent);
              setResent(true);
            }}
          >
            {resent ? "Sent again: check your inbox" : "No mail? Send the link again"}
          </button>
        </>
      ) : forgot ? (
        <ForgotPassword initialEmail={email} onBack={() => setForgot(false)} />
      ) : (
        <>
          {providers.data?.google ? (
            <>
              <button
                type="button"
                className="auth-google"
                onClick={() => {
                  rememberNext(next);
                  window.location.assign("/api/auth/google/login");
                }}
              >
                <GoogleIcon /> Continue with Google
              </button>
              <div className="auth-divider">or continue with email</div>
            </>
          ) : null}

          <div role="tabpanel" id="auth-panel" aria-labelledby={`auth-tab-${mode}`}>
            <form className="auth-form" onSubmit={submit} noValidate>
              {problems.general ? <InlineAlert>{problems.general}</InlineAlert> : null}
              <Field label="Email" error={problems.email}>
                {({ id, describedBy, invalid }) => (
                  <input
                    id={id}
                    className="input input-lg"
                    type="email"
                    autoComplete="email"
                    required
                    value={email}
                    onChange={(e) => setEmail(e.target.value)}
                    aria-describedby={describedBy}
                    aria-invalid={invalid}
                    autoFocus
                  />
                )}
              </Field>
              <Field
                label="Password"
                error={problems.password}
                hint={mode === "create" ? "At least 10 characters." : undefined}
                aside={
                  mode === "signin" ? (
                    <button type="button" className="auth-link-btn" onClick={() => setForgot(true)}>
                      Forgot?
                    </button>
                  ) : null
                }
              >
                {({ id, describedBy, invalid }) => (
                  <PasswordInput
                    large
                    id={id}
                    autoComplete={mode === "signin" ? "current-password" : "new-password"}
                    required
                    value={password}
                    onChange={(e) => setPassword(e.target.value)}
                    aria-describedby={describedBy}
                    aria-invalid={invalid}
                  />
                )}
              </Field>
              <button type="submit" className="btn btn-primary btn-lg btn-block" disabled={busy}>
                {busy ? (mode === "signin" ? "Signing in…" : "Creating account…") : submitLabel}
              </button>
            </form>
          </div>
        </>
      )}
    </AuthCard>
  );
}
