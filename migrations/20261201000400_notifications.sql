-- Notifications: each app's channels (a Slack incoming webhook or a signed generic webhook,
-- routed by environment, event and severity) and the outbox rows that deliver events to them.
-- Additive only: the previous version keeps serving while this applies (it never reads these
-- columns, and the outbox's new columns have defaults).

-- An app's notification channels, replaced on each apply. The URL (a Slack webhook URL is a
-- credential) and the signing secret are sealed with the master key, like credentials.
create table notification_channels (
    app_id            uuid not null references apps(id) on delete cascade,
    name              text not null,
    kind              text not null check (kind in ('slack', 'webhook')),
    -- empty: every environment / every event
    environments      text[] not null default '{}',
    events            text[] not null default '{}',
    -- 0 info, 1 warning, 2 critical: the least severity delivered
    min_severity      smallint not null default 0,
    url_ciphertext    bytea not null,
    secret_ciphertext bytea,
    key_id            text not null,
    primary key (app_id, name)
);

-- One row per (event, channel). `next_attempt_at` doubles as the claim's lease: a worker that
-- claims a row pushes it into the future, so a crashed worker's row comes due again on its own.
alter table outbox add column app_id uuid references apps(id) on delete cascade;
alter table outbox add column channel text;
alter table outbox add column event text;
alter table outbox add column severity text;
alter table outbox add column state text not null default 'pending'
    check (state in ('pending', 'delivered', 'failed'));
alter table outbox add column failed_at timestamptz;
alter table outbox add column updated_at timestamptz not null default now();

-- The workers' claim: due pending rows, oldest first.
create index outbox_pending_idx on outbox (next_attempt_at) where state = 'pending';
-- An app's deliveries, newest first.
create index outbox_app_idx on outbox (app_id, id desc);
