"""Refinery's exception tree and the one place that turns an error into a short user message.

    RefineryError                  expected; its message is shown to the user as is
    ├── InvalidInput               a prompt, option or attachment the user can fix
    ├── LimitReached               a queue or rate limit; says which and when to retry
    ├── NotARound                  a reply, reaction or button on something that is not a round
    ├── NotAllowed                 the user lacks the permission the action needs
    ├── Refused                    a prompt or reply hit a banned phrase (never named back)
    └── GenerationFailed           the pipeline raised; the details are logged, not shown
    ├── JobCancelled               the job was cancelled by its requester or a moderator
    └── Interrupted                the bot shut down while the job waited or ran (says if it is kept)
"""

from __future__ import annotations

import logging

from bot.discord_limits import fit

log = logging.getLogger(__name__)


class RefineryError(Exception):
    """An expected failure whose message is safe and useful to show to the user."""

    @property
    def user_message(self) -> str:
        return str(self)


class InvalidInput(RefineryError):
    """Bad user input; the message names the bad value and what is allowed."""


class LimitReached(RefineryError):
    """A queue or rate limit; `retry_after_s` says when trying again makes sense."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotARound(RefineryError):
    """The message being replied to, reacted to or clicked is not one of Refinery's rounds."""


class NotAllowed(RefineryError):
    """The user may not do this (not a moderator, not the round's requester)."""


class Refused(RefineryError):
    """A prompt, negative prompt or reply contains a banned phrase. The message never repeats the
    phrase: echoing it would teach the user what to misspell, and repost it in the channel."""

    def __init__(self, message: str = "Your prompt was refused by this server's rules.") -> None:
        super().__init__(message)


class GenerationFailed(RefineryError):
    """The pipeline failed; the user sees a short apology with the job id, the log has the traceback."""


class JobCancelled(RefineryError):
    """The job was cancelled before it finished."""


class Interrupted(RefineryError):
    """The bot shut down before the job finished (or while it was being submitted). A queue that keeps
    jobs (the job store, Redis) answers it when the bot is back; otherwise the user is asked to resend."""


def user_message(error: BaseException) -> str:
    """The one mapping from an exception to what the user reads. Unexpected errors are logged in full."""
    if isinstance(error, RefineryError):
        return fit(f"⚠️ {error.user_message}")  # messages quote user input, which may be any length
    log.error("unexpected error shown to a user as a generic failure", exc_info=error)
    return "⚠️ Something went wrong on our side. It has been logged; please try again."
