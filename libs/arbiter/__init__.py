"""Arbiter: a self-hostable, multi-tenant platform for building content-moderation classifiers.

The shared kernel lives here (`arbiter.config`, `arbiter.tenancy`, `arbiter.events`, `arbiter.storage`,
`arbiter.ml`, ...); the services live in the top-level `services` package and never import each other.
"""
