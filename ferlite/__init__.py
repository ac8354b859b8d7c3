"""ferlite: facial-emotion models from a workstation to a Raspberry Pi."""

__version__ = "0.1.0"
