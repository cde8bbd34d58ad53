-- The id a client gave its request, for correlation only: billing is keyed by request_id,
-- which the mesh makes and a client never chooses.
ALTER TABLE usage_events ADD COLUMN client_request_id text NOT NULL DEFAULT '';
