"""lmtune's version, in the lowest layer so that every module (the CLI's ``--version``, model cards, reports) can
name it without importing the package's lazy exports."""

__version__ = "0.2.0"
