import type { ReactNode } from "react";
import { Logo } from "@/components/layout/Logo";

interface AuthCardProps {
  /** The heading beside the logo. */
  title: string;
  /** The card's body: forms, messages. */
  children: ReactNode;
  /** Inside the card, under its body (the sign-in page's tabs). */
  footer?: ReactNode;
  /** Under the card (the sign-in page's fine print). */
  after?: ReactNode;
}

/** The signed-out pages' frame: a centred card under the logo and a heading. */
export function AuthCard({ title, children, footer, after }: AuthCardProps) {
  return (
    <main className="auth-page">
      <div className="auth-card">
        <div className="auth-card-body">
          <div className="auth-brand">
            <Logo size={26} />
            <h1>{title}</h1>
          </div>
          {children}
        </div>
        {footer}
      </div>
      {after}
    </main>
  );
}
