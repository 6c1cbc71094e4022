"""Compiled hot path of imgate. Import the public names from :mod:`imgate.core`."""
