-- "Stop the line" and auto-promotion. Additive only: the previous version keeps serving while
-- this applies (it never reads these columns, and the new index only constrains rollouts with
-- the `auto-promotion` trigger, which that version never creates).

-- While an app's line is stopped, nothing new starts in it (rollbacks excepted).
alter table apps
    add column line_stopped_at     timestamptz,
    add column line_stopped_reason text,
    add column line_stopped_by     text;

-- Set on the rollouts a line stop paused, so resuming the line resumes exactly those (and not
-- the ones a person paused for reasons of their own).
alter table rollouts add column line_stopped_at timestamptz;

create index rollouts_line_stopped on rollouts (app_id) where line_stopped_at is not null;

-- One automatic promotion per release and environment, however many replicas look at once.
create unique index rollouts_one_auto_promotion on rollouts (environment_id, release_id)
    where trigger = 'auto-promotion';
