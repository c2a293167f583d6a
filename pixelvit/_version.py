"""pixelvit's version, importable without torch (pixelvit.io writes it into every saved model)."""

__version__ = "0.1.0"
