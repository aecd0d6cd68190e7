"""Billfold: billing, wallet and subscription control plane for AI-agent platforms."""

__version__ = "0.1.0"
