"""Exceptions fedtl raises; each message names the file, site or setting to fix."""


class FedtlError(Exception):
    """Base class of every error fedtl reports to an operator."""


class ConfigError(FedtlError, ValueError):
    """A setting is missing, malformed or impossible."""


class DataError(FedtlError):
    """A site's data folder cannot be used as it is."""


class WeightsError(FedtlError):
    """The VGG16 base weights cannot be loaded or are not the expected ones."""


class BudgetExhaustedError(FedtlError):
    """Training once more would spend more privacy budget than the site allows."""


class PolicyRefusedError(FedtlError):
    """The site's own policy does not admit what the run asks of it."""


class UpdateRejectedError(FedtlError):
    """A site's update failed validation and must not be aggregated."""
