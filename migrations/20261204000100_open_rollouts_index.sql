-- The open rollouts of an environment (queued, waiting for approval, running, paused, rolling
-- back): what a push supersedes and checks for something newer, what a start waits behind and
-- what the engine activates next. Without it those reads walked the environment's whole
-- history (rollouts_environment_idx), so every push and start got slower with each deploy the
-- environment had ever had: 0.5 ms per read at ~2,000 rollouts in one environment.
create index rollouts_environment_open_idx on rollouts (environment_id, created_at)
    where state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back');
