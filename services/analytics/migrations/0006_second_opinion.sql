-- Whether a sampled decision heard the Router's second opinion (the embedding classifier asked
-- when the fast models were unsure), so `tiermesh route --stats` can say how often, per rule.
ALTER TABLE route_decisions ADD COLUMN second_opinion boolean NOT NULL DEFAULT false;
