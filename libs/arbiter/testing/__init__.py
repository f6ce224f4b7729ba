"""Test helpers shared by every service's tests: tenants, API clients, the cross-tenant ("victim org") check.

Tests that touch the database mark themselves `pytest.mark.django_db(databases="__all__")` (every service has
its own database). Cross-tenant tests carry `@pytest.mark.cross_tenant("<url-name>", ...)`; a repository test
fails when an org-scoped URL pattern has none.
"""
