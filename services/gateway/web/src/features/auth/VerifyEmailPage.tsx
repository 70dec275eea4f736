import { useEffect, useRef, useState } from "react";
import { Link, useNavigate, useSearchParams } from "react-router";
import { InlineAlert, Spinner } from "@/components/ui/Feedback";
import { describeError } from "@/lib/api/errors";
import { useAcceptSignIn } from "./api";
import { verifyEmail } from "./flows";
import { consumeNext } from "./next";
import { AuthCard } from "./AuthCard";
import "./auth.css";

/** The page the verification mail links to: confirms the address and signs in. */
export function VerifyEmailPage() {
  const [params] = useSearchParams();
  const token = params.get("token") ?? "";
  const accept = useAcceptSignIn();
  const navigate = useNavigate();
  const [error, setError] = useState<string | null>(token ? null : "This link has no token. Open the link from the mail again.");
  const started = useRef(false);

  useEffect(() => {
    if (!token || started.current) return;
    started.current = true; // one attempt: the token is single-use
    verifyEmail(token)
      .then((signedIn) => {
        accept(signedIn);
        navigate(consumeNext() ?? "/", { replace: true });
      })
      .catch((e: unknown) => setError(describeError(e)));
  }, [token, accept, navigate]);

  return (
    <AuthCard title="Verify your email">
      {error ? (
        <>
          <InlineAlert>{error}</InlineAlert>
          <p className="muted">
            Links expire and work once. Sign in to have a new one sent, or <Link to="/signin">go to sign-in</Link>.
          </p>
        </>
      ) : (
        <div className="row">
          <Spinner label="Verifying" /> <span className="muted">Verifying your email…</span>
        </div>
      )}
    </AuthCard>
  );
}
