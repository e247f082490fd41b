-- How each metered call ended, so a stream cut short is told apart from one that completed:
-- 'completed' | 'rejected' (a 4xx from the gateway or the engine) | 'client_disconnected' | 'engine_error'
-- | 'timeout' | 'server_shutdown'. Rows written before this migration have none.
ALTER TABLE usage_events ADD COLUMN end_reason text;
