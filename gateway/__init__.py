"""store-gateway: the in-store edge gateway daemon."""

__version__ = "0.1.0"
