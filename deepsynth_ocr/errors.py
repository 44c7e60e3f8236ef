"""The base class of mistakes a user can fix (a config value, a missing file, the wrong machine).

Its message names the field, file or value and says what to do; the CLI prints it as one line.
Anything else is a bug and keeps its traceback.
"""

import signal


class UserError(ValueError):
    """A mistake the user can fix; the message says which and how."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named (a manifest, a corpus, a font, a notebook) does not exist."""


class RunStopped(Exception):
    """A run that stopped before its end on purpose: the manifest gets ``status`` and the CLI exits ``exit_code``."""

    status = "failed"
    exit_code = 1


class Interrupted(RunStopped):
    """SIGTERM or SIGINT stopped the job (status ``interrupted``, exit 128 + the signal's number); a job with
    nothing to checkpoint stops at once, a resume starts it again in the same directory."""

    status = "interrupted"

    def __init__(self, signal_name: str, message: str | None = None):
        super().__init__(message or f"{signal_name} received: stopped (nothing to checkpoint at this point)")
        self.signal_name, self.exit_code = signal_name, 128 + signal.Signals[signal_name].value


class TrainingInterrupted(Interrupted):
    """SIGTERM or SIGINT during training: a checkpoint was saved at ``step``; a resume continues from it."""

    def __init__(self, signal_name: str, step: int, checkpoint: str, run_dir: str):
        super().__init__(signal_name, f"{signal_name} at step {step}: checkpoint saved at {checkpoint}; "
                                      f"continue with: deepsynth-ocr resume {run_dir}")
        self.step = step


class NonFiniteLoss(RunStopped):
    """The loss or the gradient norm became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, what: str, step: int, last_good: str | None):
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written before it"
        super().__init__(f"non-finite {what} at step {step}; {kept}. Lower train.learning_rate or check the data")
        self.step = step
        self.status = f"failed: non-finite loss at step {step}"


class RunPruned(RunStopped):
    """A sweep's pruner stopped this trial at ``step`` (its periodic CER was behind the other trials')."""

    status = "pruned"

    def __init__(self, step: int, value: float):
        super().__init__(f"pruned at step {step} (periodic CER {value:.4f})")
        self.step, self.value = step, value


class RowError(Exception):
    """A data row is rejected: ``reason`` is a short code (``truncated_image``, ``no_short_answer``), ``detail`` says
    what to fix. ``prepare`` counts it in the report by row; it is not a job failure."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
