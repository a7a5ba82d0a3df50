-- Which replica holds each agent's WebSocket (its gRPC URL), so a request
-- reaching another replica is relayed there. No tenant's data: endpoint
-- ids and replica addresses, read by every replica.
CREATE TABLE usp_connections (
    endpoint_id  TEXT PRIMARY KEY,
    url          TEXT NOT NULL,
    connect_time BIGINT NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON usp_connections TO rdm_app;
