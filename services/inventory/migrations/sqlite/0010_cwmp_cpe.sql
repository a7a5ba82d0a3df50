-- A CPE of rdm's own ACS is named by its Inform's DeviceId
-- (OUI-ProductClass-SerialNumber): in one tenant, at most one builtin tr069
-- endpoint names it. Another tenant's CPE may have the same id.
CREATE UNIQUE INDEX endpoints_cwmp_cpe ON endpoints (tenant_id, json_extract(config, '$.device_id'))
    WHERE protocol = 'tr069' AND json_extract(config, '$.acs') = 'builtin';
