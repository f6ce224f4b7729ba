"""Tables owned by this service (in its own database)."""
