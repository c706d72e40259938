"""LimeDB: a distributed key-value database for Kubernetes."""

__version__ = "0.1.0"
