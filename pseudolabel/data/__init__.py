"""Data in: scanning and validating images, label formats, and the SQLite ledger."""
