"""Contract suites: each port's fake and its real adapters answer the same tests."""
