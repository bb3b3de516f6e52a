-- The dashboard: the post-rollback checklist kept beside each rollback's incident note, and the
-- indexes behind its pages (each page reads a bounded slice, newest first, however large the
-- history grows). Additive only: the previous version keeps serving while this applies.

-- {"<item>": {"by": "user:ana", "at": "2026-12-01T10:00:00Z"}, ...}: which items of the
-- post-rollback checklist are done, by whom and when.
alter table rollbacks add column checklist jsonb not null default '{}';

-- An app's releases page, newest first, paged by id.
create index releases_app_id_idx on releases (app_id, id desc);
-- The quarantined releases of an app.
create index releases_quarantined_idx on releases (app_id, quarantined_at desc)
    where quarantined_at is not null;
-- What an environment runs: its latest succeeded rollout.
create index rollouts_environment_succeeded_idx on rollouts (environment_id, finished_at desc, id desc)
    where state = 'succeeded';
-- Recent rollouts across apps, and of one app (the overview, delivery metrics).
create index rollouts_created_idx on rollouts (created_at desc, id desc);
create index rollouts_app_created_idx on rollouts (app_id, created_at desc);
-- Rollback history of an app.
create index rollbacks_app_idx on rollbacks (app_id, requested_at desc);
-- The audit log filtered by environment or actor.
create index events_environment_idx on events (environment_id, id desc);
create index events_actor_idx on events (actor, id desc);
-- The latest checks of a rollout's gates by kind (health on the overview).
create index gate_checks_rollout_idx on gate_checks (rollout_id, id desc);
-- Config history of an environment.
create index config_history_environment_idx on config_history (environment_id, id desc);
-- Where a release is live.
create index live_components_release_idx on live_components (release_id);
