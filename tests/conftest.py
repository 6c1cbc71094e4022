"""Test-wide plugins: real Redis and Kafka fixtures (tests/services.py)."""

pytest_plugins = ["services"]
