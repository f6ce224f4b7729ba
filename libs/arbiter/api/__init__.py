"""Pieces every service's HTTP API shares: the error shape, pagination, health checks, request logging."""
