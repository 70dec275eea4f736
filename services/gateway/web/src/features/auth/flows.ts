/** The account flows whose links arrive by mail: email verification and password reset,
 * plus changing the password and signing out everywhere from Settings. */
import { api, unwrap } from "@/lib/api/client";
import type { SignedIn } from "./api";

export async function requestPasswordReset(email: string): Promise<void> {
  await unwrap(api.POST("/api/auth/password-reset", { body: { email } }), "Could not send the reset link");
}

export async function confirmPasswordReset(token: string, newPassword: string): Promise<void> {
  await unwrap(
    api.POST("/api/auth/password-reset/confirm", { body: { token, new_password: newPassword } }),
    "Could not set the new password",
  );
}

export async function verifyEmail(token: string): Promise<SignedIn> {
  return unwrap(api.POST("/api/auth/verify-email", { body: { token } }), "Could not verify the email");
}

export async function resendVerification(email: string): Promise<void> {
  await unwrap(api.POST("/api/auth/verify-email/resend", { body: { email } }), "Could not send the link");
}

export async function changePassword(currentPassword: string, newPassword: string): Promise<void> {
  await unwrap(
    api.POST("/api/auth/password", { body: { current_password: currentPassword, new_password: newPassword } }),
    "Could not change the password",
  );
}

export async function signOutEverywhere(): Promise<void> {
  await unwrap(api.POST("/api/auth/logout-all"), "Could not sign out everywhere");
}
