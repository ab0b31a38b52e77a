"""Exceptions fedtl raises; each message names the file, site or setting to fix.

Each kind of error has its own exit code, so scripts can tell them apart (`EXIT_CODES`,
shown in `fedtl --help` and the README).
"""

# Exit codes of every fedtl command. 2 is argparse's own for a bad command line.
EXIT_CODES = {
    0: "success",
    1: "unexpected failure",
    2: "usage error (bad command line)",
    3: "refused by the server (this site's key is not registered)",
    4: "configuration error (a setting, certificate, key, policy or weights file)",
    5: "data error (a missing, empty, unreadable or mismatched image folder or model file)",
    6: "privacy budget exhausted, or refused by a site's own policy",
    7: "the run did not complete on the server",
}
REFUSED_BY_SERVER = 3


def exit_codes_help() -> str:
    """One line for --help: "exit codes: 0 success; 1 ..."."""
    return "exit codes: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items())


class FedtlError(Exception):
    """Base class of every error fedtl reports to an operator."""

    exit_code = 1


class ConfigError(FedtlError, ValueError):
    """A setting is missing, malformed or impossible."""

    exit_code = 4


class DataError(FedtlError):
    """A site's data folder cannot be used as it is."""

    exit_code = 5


class WeightsError(FedtlError):
    """The VGG16 base weights cannot be loaded or are not the expected ones."""

    exit_code = 4


class BudgetExhaustedError(FedtlError):
    """Training once more would spend more privacy budget than the site allows."""

    exit_code = 6


class PolicyRefusedError(FedtlError):
    """The site's own policy does not admit what the run asks of it."""

    exit_code = 6


class UpdateRejectedError(FedtlError):
    """A site's update failed validation and must not be aggregated."""


class RunFailedError(FedtlError):
    """A run launched on the server ended without completing."""

    exit_code = 7
