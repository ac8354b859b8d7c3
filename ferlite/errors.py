"""Typed errors. Every user mistake becomes one of these; the CLI prints its one-line message."""


class FerliteError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 2


class DatasetError(FerliteError):
    """A dataset file or folder is missing, malformed or has unknown labels."""


class BundleError(FerliteError):
    """A .ferlite bundle is unreadable, corrupted, or does not describe its model."""


class ModelError(FerliteError):
    """A model file cannot be loaded or does not fit the task."""


class RuntimeMissingError(FerliteError):
    """No usable TFLite interpreter (or other optional dependency) is installed."""


class VerificationError(FerliteError):
    """The int8 model disagrees with the float model beyond the allowed margin."""

    exit_code = 1


class ConfigError(FerliteError):
    """Run options that are out of range or contradict each other."""


class SourceError(FerliteError):
    """A camera, video, image or folder to read frames from cannot be found or opened."""


class LogError(FerliteError):
    """A results log cannot be opened, or is not a ferlite log."""


class FleetError(FerliteError):
    """An MQTT broker or a collected database cannot be reached, or refuses the connection."""
