-- A freeze window that begins while a rollout runs holds it at its next phase boundary; a
-- rollout an admin started despite a freeze keeps going (its override reason is kept here).
alter table rollouts add column freeze_override text;

-- Whether a window's beginning was announced and not yet its end: the scheduler flips it with
-- a conditional update, so with several replicas each edge is announced once.
alter table freeze_windows add column announced_on boolean not null default false;
