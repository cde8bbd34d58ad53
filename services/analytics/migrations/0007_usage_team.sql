-- The team of the API key a request came with, so a team's budget can be checked against what
-- all its keys spent ('' for requests without a team).
ALTER TABLE usage_events ADD COLUMN team text NOT NULL DEFAULT '' CHECK (length(team) <= 128);
CREATE INDEX usage_events_team ON usage_events (team, occurred_at) WHERE team <> '';
