"""A cluster role started without its client libraries says which to install (imgate[cluster])."""

from __future__ import annotations

import pytest

from imgate.config import ConfigError
from imgate.roles import check_packages


def absent(module):
    return None


def test_logic_names_both_missing_clients():
    with pytest.raises(ConfigError) as e:
        check_packages("logic", find=absent)
    assert str(e.value) == ("imgate logic needs redis and confluent-kafka, which are not installed: "
                            "pip install 'imgate[cluster]'")


def test_push_names_kafka_only_and_the_proxy_needs_neither():
    with pytest.raises(ConfigError) as e:
        check_packages("push", find=absent)
    assert str(e.value) == "imgate push needs confluent-kafka, which is not installed: pip install 'imgate[cluster]'"
    check_packages("proxy", find=absent)


def test_installed_clients_pass():
    check_packages("logic", find=lambda module: object())
    with pytest.raises(ConfigError, match="needs redis, which is not installed"):
        check_packages("logic", find=lambda module: None if module == "redis" else object())
