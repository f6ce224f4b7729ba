"""The dataset service: Uploads with column mapping, rows, immutable validated snapshots."""
