-- How a dead letter was resolved: the registration id a replay produced (the person's
-- first id was never stored), and the operator's note on a replay or a drop.
ALTER TABLE dead_letters ADD COLUMN replayed_as text;
ALTER TABLE dead_letters ADD COLUMN note text NOT NULL DEFAULT '';
CREATE INDEX dead_letters_state_reason ON dead_letters (state, reason);
