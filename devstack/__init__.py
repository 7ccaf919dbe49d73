"""Local development stack: private servers for `make run`, `make test` and the test suite."""
