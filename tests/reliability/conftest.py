"""The end-to-end fixtures the reliability runs share: real daphne processes (their logs are checked for keys) and the
feed simulator (in the test's event loop)."""

from tests.e2e.conftest import gateway_factory, simulator  # noqa: F401  (fixtures for the tests of this folder)
