"""One error family: a message for people and the exit code the CLI returns."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes, decided here and nowhere else."""

    OK = 0
    FAILED = 1  # the work ran and its answer is "no" (a failed build, test, check)
    USAGE = 2  # bad input or set-up: nothing was changed, the message says what to do
    BUSY = 3  # another run holds the lock (the nightly pipeline): nothing was done, try later
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM


class FactoryError(Exception):
    """An error with a one-line message meant for the person running the factory."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class ConfigError(FactoryError):
    """Bad input: a flag, a variable, a config file, a family name."""


class AwsError(FactoryError):
    """An AWS call failed; the message names the call and AWS's reason, `code` AWS's error code."""

    exit_code = ExitCode.FAILED

    def __init__(
        self, message: str, exit_code: ExitCode | None = None, *, code: str | None = None
    ) -> None:
        super().__init__(message, exit_code)
        self.code = code


class UnsupportedOperation(AwsError):
    """The endpoint does not implement the call (an older region, moto, a proxy)."""


class PackerError(FactoryError):
    """Packer failed; the message carries Packer's own error lines."""

    exit_code = ExitCode.FAILED


class VerificationError(FactoryError):
    """An image failed (or could not run) its tests."""

    exit_code = ExitCode.FAILED


class RefusedError(FactoryError):
    """A safety rule refused the operation (unverified image, stateful group, ...)."""

    exit_code = ExitCode.USAGE


class Interrupted(FactoryError):
    """The command was interrupted by a signal after cleaning up."""

    def __init__(self, signum: int) -> None:
        import signal

        code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
        super().__init__(f"interrupted by {signal.Signals(signum).name}; cleaned up", code)
        self.signum = signum
