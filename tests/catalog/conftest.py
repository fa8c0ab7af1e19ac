"""Fixtures of the catalog tests: the web UI's browser client, for the custom model form."""

from tests.web.conftest import browser_for  # noqa: F401 (the register form is posted as a browser does)
