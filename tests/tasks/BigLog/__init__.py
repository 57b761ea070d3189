"""A task service used by the integration tests."""
