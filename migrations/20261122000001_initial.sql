-- Shipgate's whole model. Later migrations expand and contract; never edit this one once applied.

create table apps (
    id              uuid primary key,
    name            text not null,
    repository      text,
    -- the applied document, normalised, and its hash (so an unchanged apply is a no-op)
    config          jsonb not null,
    config_hash     text not null,
    webhook_secret_ciphertext bytea,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint apps_name_key unique (name)
);

create table components (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    name            text not null,
    position        int not null,
    retired_at      timestamptz,
    constraint components_app_name_key unique (app_id, name)
);

create table environments (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    name            text not null,
    position        int not null,
    -- the plan new rollouts snapshot; policy (approvals, auto-deploy, concurrency, promotion)
    plan            jsonb not null,
    policy          jsonb not null,
    auto_deploy_paused_at     timestamptz,
    auto_deploy_paused_reason text,
    retired_at      timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint environments_app_name_key unique (app_id, name)
);

create table credentials (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    name            text not null,
    -- AES-256-GCM: nonce || ciphertext; key_id names the master key generation
    ciphertext      bytea not null,
    key_id          text not null,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint credentials_app_name_key unique (app_id, name)
);

create table targets (
    id              uuid primary key,
    environment_id  uuid not null references environments(id) on delete cascade,
    component_id    uuid not null references components(id) on delete cascade,
    provider        text not null,
    settings        jsonb not null,
    credential_name text,
    health          jsonb,
    constraint targets_environment_component_key unique (environment_id, component_id)
);

create table releases (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    version         text not null,
    git_sha         text,
    git_ref         text,
    artifacts       jsonb not null,
    config          jsonb not null default '{}',
    notes           text,
    forward_only    boolean not null default false,
    content_hash    text not null,
    created_by      text not null,
    source          text not null,          -- api | cli | webhook | demo
    committed_at    timestamptz,            -- the commit's own time, for lead time
    quarantined_at  timestamptz,
    quarantine_reason text,
    created_at      timestamptz not null default now(),
    constraint releases_app_version_key unique (app_id, version)
);
create index releases_app_created_idx on releases (app_id, created_at desc, id desc);

create type rollout_state as enum (
    'queued', 'pending_approval', 'in_progress', 'paused',
    'succeeded', 'failed', 'cancelled', 'superseded',
    'rolling_back', 'rolled_back', 'rollback_failed');
create type rollout_kind as enum ('deploy', 'promote', 'rollback', 'config');

create table rollouts (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    environment_id  uuid not null references environments(id) on delete cascade,
    release_id      uuid not null references releases(id),
    -- the release the environment ran when this rollout was created (what a rollback returns to)
    previous_release_id uuid references releases(id),
    kind            rollout_kind not null,
    state           rollout_state not null,
    state_reason    text,
    plan            jsonb not null,          -- snapshot of the environment's plan at creation
    targets         jsonb not null,          -- snapshot of the targets the plan touches
    current_phase   int not null default 0,
    rollback_of     uuid references rollouts(id),
    rolled_back_by  uuid references rollouts(id),
    created_by      text not null,
    trigger         text not null,           -- manual | api | webhook | gate | deadline | demo
    -- bumped by every change to the row; engine writes are fenced on it and on the lease
    version         bigint not null default 0,
    -- engine bookkeeping
    lease_owner     text,
    lease_until     timestamptz,
    next_wake_at    timestamptz not null default now(),
    failed_ticks    int not null default 0,
    created_at      timestamptz not null default now(),
    -- when it left the queue (approval deadlines count from here)
    activated_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz not null default now()
);
create index rollouts_due_idx on rollouts (next_wake_at)
    where state in ('queued', 'pending_approval', 'in_progress', 'paused', 'rolling_back');
create index rollouts_environment_idx on rollouts (environment_id, created_at desc);
create index rollouts_release_idx on rollouts (release_id);
-- at most one rollout drives an environment at a time (rollbacks jump the queue by design: the
-- rollout they undo moves to rolling_back, which is not in this set)
create unique index rollouts_one_active_per_environment on rollouts (environment_id)
    where state in ('pending_approval', 'in_progress', 'paused');

create type phase_state as enum ('pending', 'running', 'verifying', 'succeeded', 'failed', 'skipped', 'aborted');

create table phases (
    id              uuid primary key,
    rollout_id      uuid not null references rollouts(id) on delete cascade,
    position        int not null,
    name            text not null,
    state           phase_state not null default 'pending',
    state_reason    text,
    started_at      timestamptz,
    -- gates count only checks taken after this instant (reset by a person's retry)
    verifying_at    timestamptz,
    retry_requested_at timestamptz,
    finished_at     timestamptz,
    constraint phases_rollout_position_key unique (rollout_id, position)
);

create type step_state as enum ('pending', 'submitted', 'succeeded', 'failed');

create table step_runs (
    id              uuid primary key,
    rollout_id      uuid not null references rollouts(id) on delete cascade,
    phase_id        uuid not null references phases(id) on delete cascade,
    step_index      int not null,
    attempt         int not null,
    kind            text not null,           -- deploy | rollback | config | traffic | job | wait
    component       text,
    provider        text,
    state           step_state not null default 'pending',
    -- recorded before the provider call: the key the provider can be asked about on resume
    natural_key     text not null,
    provider_ref    text,
    request         jsonb not null,
    result          jsonb,
    error           text,
    created_at      timestamptz not null default now(),
    submitted_at    timestamptz,
    last_polled_at  timestamptz,
    finished_at     timestamptz,
    constraint step_runs_natural_key_key unique (natural_key),
    constraint step_runs_phase_step_attempt_key unique (phase_id, step_index, attempt)
);
create index step_runs_rollout_idx on step_runs (rollout_id);

create table gate_checks (
    id              bigserial primary key,
    rollout_id      uuid not null references rollouts(id) on delete cascade,
    phase_id        uuid not null references phases(id) on delete cascade,
    gate_index      int not null,
    gate_kind       text not null,
    verdict         text not null check (verdict in ('pass', 'fail', 'inconclusive')),
    value           double precision,
    detail          jsonb not null default '{}',
    checked_at      timestamptz not null default now()
);
create index gate_checks_phase_idx on gate_checks (phase_id, gate_index, id);

create table approvals (
    id              uuid primary key,
    rollout_id      uuid not null references rollouts(id) on delete cascade,
    phase_id        uuid references phases(id) on delete cascade,
    gate_index      int,
    actor           text not null,
    decision        text not null check (decision in ('approve', 'reject')),
    comment         text,
    created_at      timestamptz not null default now(),
    -- nulls not distinct: a rollout-level approval (no phase, no gate) also counts once per actor
    constraint approvals_once_per_actor unique nulls not distinct (rollout_id, phase_id, gate_index, actor)
);

-- what runs in each environment, per component (updated when a deploy or rollback step succeeds)
create table live_components (
    environment_id  uuid not null references environments(id) on delete cascade,
    component_id    uuid not null references components(id) on delete cascade,
    release_id      uuid not null references releases(id),
    rollout_id      uuid references rollouts(id) on delete set null,
    provider_ref    text,
    since           timestamptz not null default now(),
    -- what the platform itself last said serves (drift: someone deployed or rolled back there)
    observed_ref    text,
    observed_version text,
    observed_at     timestamptz,
    drifted         boolean not null default false,
    primary key (environment_id, component_id)
);

create table rollbacks (
    id              uuid primary key,
    app_id          uuid not null references apps(id) on delete cascade,
    environment_id  uuid not null references environments(id) on delete cascade,
    rollout_id      uuid not null references rollouts(id) on delete cascade,  -- the rollback rollout
    rollback_of     uuid references rollouts(id) on delete set null,          -- the rollout undone
    from_release_id uuid references releases(id),
    to_release_id   uuid not null references releases(id),
    trigger         text not null check (trigger in ('manual', 'api', 'gate', 'deadline')),
    reason          text not null,
    actor           text not null,
    detected_at     timestamptz,
    requested_at    timestamptz not null,
    restored_at     timestamptz,
    outcome         text,                    -- null while running | restored | failed
    incident_note   text,
    constraint rollbacks_rollout_key unique (rollout_id)
);
create index rollbacks_environment_idx on rollbacks (environment_id, requested_at desc);

create table events (
    id              bigserial primary key,
    at              timestamptz not null default now(),
    app_id          uuid references apps(id) on delete cascade,
    environment_id  uuid references environments(id) on delete cascade,
    rollout_id      uuid references rollouts(id) on delete cascade,
    actor_kind      text not null check (actor_kind in ('user', 'token', 'webhook', 'engine', 'system')),
    actor           text not null,
    action          text not null,
    details         jsonb not null default '{}'
);
create index events_rollout_idx on events (rollout_id, id);
create index events_app_idx on events (app_id, id desc);

create table webhook_deliveries (
    id              uuid primary key,
    source          text not null,           -- github | gitlab | generic
    delivery_id     text not null,
    app_id          uuid references apps(id) on delete cascade,
    event           text not null,
    received_at     timestamptz not null default now(),
    verdict         text not null,           -- accepted | ignored | refused | deployed
    reason          text,
    release_id      uuid references releases(id) on delete set null,
    rollout_id      uuid references rollouts(id) on delete set null,
    payload_digest  text not null,
    constraint webhook_deliveries_source_delivery_key unique (source, delivery_id)
);

create table outbox (
    id              bigserial primary key,
    topic           text not null,
    payload         jsonb not null,
    destination     text,
    created_at      timestamptz not null default now(),
    attempts        int not null default 0,
    next_attempt_at timestamptz not null default now(),
    delivered_at    timestamptz,
    last_error      text
);
create index outbox_due_idx on outbox (next_attempt_at) where delivered_at is null;

create table users (
    id              uuid primary key,
    username        text not null,
    password_hash   text not null,
    role            text not null check (role in ('viewer', 'deployer', 'approver', 'admin')),
    created_at      timestamptz not null default now(),
    disabled_at     timestamptz,
    constraint users_username_key unique (username)
);

create table api_tokens (
    id              uuid primary key,
    name            text not null,
    scopes          text[] not null,
    app_id          uuid references apps(id) on delete cascade,
    environment     text,
    created_by      text not null,
    created_at      timestamptz not null default now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz
);

create table idempotency_keys (
    key             text not null,
    principal       text not null,
    request_hash    text not null,
    status          int not null,
    response        jsonb not null,
    created_at      timestamptz not null default now(),
    primary key (principal, key)
);

create table freeze_windows (
    id              uuid primary key,
    app_id          uuid references apps(id) on delete cascade,
    environment_id  uuid references environments(id) on delete cascade,
    name            text not null,
    -- one_off: starts_at..ends_at; weekly: days + local start/end in time_zone
    kind            text not null check (kind in ('one_off', 'weekly')),
    starts_at       timestamptz,
    ends_at         timestamptz,
    weekly          jsonb,
    time_zone       text not null default 'UTC',
    blocks_manual   boolean not null default true,
    blocks_automation boolean not null default true,
    allows_rollback boolean not null default true,
    reason          text,
    created_by      text not null,
    created_at      timestamptz not null default now()
);

create table config_values (
    environment_id  uuid not null references environments(id) on delete cascade,
    component_id    uuid not null references components(id) on delete cascade,
    key             text not null,
    value           text,
    updated_at      timestamptz not null default now(),
    updated_by      text not null,
    rollout_id      uuid references rollouts(id) on delete set null,
    primary key (environment_id, component_id, key)
);

create table config_history (
    id              bigserial primary key,
    environment_id  uuid not null references environments(id) on delete cascade,
    component_id    uuid not null references components(id) on delete cascade,
    key             text not null,
    old_value       text,
    new_value       text,
    changed_at      timestamptz not null default now(),
    changed_by      text not null,
    rollout_id      uuid references rollouts(id) on delete set null
);

-- The simulated provider's "platform": what it was asked to do and when each operation settles.
-- Kept in Postgres so a restarted Shipgate finds the operations it started, and tests can count
-- exactly how many deploys were issued.
create table simulated_operations (
    id              uuid primary key,
    target          text not null,           -- app/environment/component
    natural_key     text not null,
    kind            text not null,
    version         text,
    artifact        text,
    request         jsonb not null,
    outcome         text not null check (outcome in ('succeeded', 'failed')),
    detail          text,
    created_at      timestamptz not null default now(),
    ready_at        timestamptz not null,
    issued_by       text not null
);
create index simulated_operations_target_idx on simulated_operations (target, ready_at desc);
create index simulated_operations_key_idx on simulated_operations (natural_key);
