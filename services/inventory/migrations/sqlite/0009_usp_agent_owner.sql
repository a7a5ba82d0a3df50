-- A USP agent belongs to one device, so to one tenant: its endpoint id is
-- in at most one usp endpoint (notifications and WebSocket connections are
-- routed by it).
CREATE UNIQUE INDEX endpoints_usp_agent ON endpoints (json_extract(config, '$.endpoint_id'))
    WHERE protocol = 'usp';
