"""Fixtures for every test; the helpers themselves live in harness.py so tests can import them."""

import pytest
from harness import unique_name_factory


@pytest.fixture
def unique_name():
    """Short unique names (interface names are limited to 15 bytes): prefix + 6 hex digits."""
    return unique_name_factory


@pytest.fixture
def made():
    """Names for namespaces and links a test makes; whatever is left of exactly those is removed after it."""
    from netfixtures import Registry

    registry = Registry()
    yield registry
    registry.cleanup()
