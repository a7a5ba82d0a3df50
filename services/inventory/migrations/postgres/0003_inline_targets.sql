-- Per-tenant allow-list for inline targets (comma-separated CIDRs; empty: off).
ALTER TABLE tenants ADD COLUMN inline_cidrs TEXT NOT NULL DEFAULT '';
