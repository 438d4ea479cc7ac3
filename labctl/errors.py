"""The lab's error classes; each carries the exit code the CLI returns for it.

Exit codes: 0 all passed, 1 an expectation failed, 2 usage or configuration
error, 3 infrastructure error (QEMU missing, guest never booted, ...).
"""

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3


class LabError(Exception):
    """Base class: a one-line reason a person can act on."""

    exit_code = EXIT_INFRA


class ConfigError(LabError):
    """Bad user input: names the file, line and key, and what to do."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: tuple | None = None):
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message)
        self.path = path
        self.line = line
        self.key = key  # the scenario key at fault, when found on the guest (runner names the file)


class InfraError(LabError):
    """The lab or the host failed, not the kernel under test."""

    exit_code = EXIT_INFRA


class Interrupted(LabError):
    """SIGINT or SIGTERM arrived; the run was stopped cleanly."""

    exit_code = 130
