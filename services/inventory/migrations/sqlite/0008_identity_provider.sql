-- A tenant's identity provider (its Mellophone server): an encoded
-- rdm.inventory.v1.IdentityProvider, base64, its tokens sealed; empty: none.
ALTER TABLE tenants ADD COLUMN identity_provider TEXT NOT NULL DEFAULT '';
