"""Tenancy and identity: orgs, memberships with roles, org-scoped API keys, authentication, scoping.

The tables belong to the gateway service's database; every service reads them to authenticate requests.
"""
