"""End-to-end tests through Ray Serve (one Ray instance for the whole package; see conftest.py)."""
