-- A tenant's own settings (its admins change them): an encoded
-- rdm.inventory.v1.TenantSettings, base64; empty: the defaults.
ALTER TABLE tenants ADD COLUMN settings TEXT NOT NULL DEFAULT '';
