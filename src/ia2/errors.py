"""One exception type for user-facing errors, so the CLI can print one clear line and exit non-zero."""

from __future__ import annotations


class IA2Error(Exception):
    """A problem the user can fix. ``hint`` says how; the CLI prints ``message (hint)`` without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class TrainingDiverged(IA2Error):
    """The loss became NaN or infinite; the run is recorded as failed and a sweep moves on."""

    def __init__(self, stage: str, step: int, loss: float):
        super().__init__(
            f"loss became {loss} in stage '{stage}' at optimizer step {step}",
            "lower the learning rate (--lr) or check the task data",
        )
        self.stage, self.step, self.loss = stage, step, loss


class DiskFull(IA2Error, OSError):
    """No space left while saving. Nothing partial was left behind; also an ``OSError`` (errno ENOSPC)."""

    def __init__(self, path):
        super().__init__(f"disk full while writing {path}; nothing was left behind",
                         "free some space and run the same command again (finished work is kept)")
        self.errno = 28  # errno.ENOSPC
        self.path = str(path)
