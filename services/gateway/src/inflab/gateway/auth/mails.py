"""What the account mails say. Plain text: every mail client shows it, and a link in it
is exactly what it looks like."""

from __future__ import annotations

from inflab.core.settings import Settings
from inflab.gateway.auth.links import link_url
from inflab.gateway.mail import Mail

SIGNATURE = "\n-- \nInfluence Lab\n"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.0f} hours" if hours >= 2 else f"{seconds / 60:.0f} minutes"


def verification(to: str, token: str, settings: Settings) -> Mail:
    return Mail(to, "Confirm your email address for Influence Lab", (
        "Someone, probably you, made an Influence Lab account with this address.\n\n"
        "To confirm it is yours, open this link:\n\n"
        f"{link_url('verify_email', token, settings)}\n\n"
        f"The link works once, for {_hours(settings.email_verification_ttl_s)}. If you did not make "
        "the account, ignore this mail: nobody can sign in to it without this link.\n" + SIGNATURE
    ))


def already_registered(to: str, settings: Settings) -> Mail:
    return Mail(to, "Your Influence Lab account", (
        "Someone, probably you, tried to make an Influence Lab account with this address, "
        "but it already has one.\n\n"
        f"Sign in at {settings.public_url.rstrip('/')}/ . If you forgot your password, ask for a "
        "reset link on the sign-in page.\n\nIf it was not you, nothing has changed and you can "
        "ignore this mail.\n" + SIGNATURE
    ))


def password_reset(to: str, token: str, settings: Settings) -> Mail:
    return Mail(to, "Reset your Influence Lab password", (
        "Someone, probably you, asked to reset the password of the Influence Lab account "
        "with this address.\n\nTo choose a new password, open this link:\n\n"
        f"{link_url('reset_password', token, settings)}\n\n"
        f"The link works once, for {_hours(settings.password_reset_ttl_s)}. Setting a new password "
        "signs the account out everywhere and revokes its API tokens. If you did not ask for "
        "this, ignore this mail: your password stays as it is.\n" + SIGNATURE
    ))


def password_changed(to: str, settings: Settings, *, reset: bool) -> Mail:
    how = "reset through a mailed link" if reset else "changed from a signed-in session"
    return Mail(to, "Your Influence Lab password was changed", (
        f"The password of the Influence Lab account with this address was just {how}.\n\n"
        "If that was you, there is nothing to do. If not, reset your password at once from "
        f"the sign-in page ({settings.public_url.rstrip('/')}/) and check the account's API tokens.\n"
        + SIGNATURE
    ))
