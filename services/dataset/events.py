"""Event handlers this service consumes, declared with `@handles("<type>")`."""
