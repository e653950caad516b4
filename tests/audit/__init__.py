"""The reliability audit: opt-in (tests/conftest.py leaves this directory out unless named), see conftest.py."""
