-- Lead time for changes without a join: each rollout keeps its release's commit time (or, with
-- none, the release's creation), set by a trigger on insert. The delivery-metrics page then
-- aggregates an environment's finished deploys from one index range instead of joining every
-- deploy with its release. Additive: the previous version keeps serving while this applies.
alter table rollouts add column release_committed_at timestamptz;

update rollouts r
   set release_committed_at = coalesce(rel.committed_at, rel.created_at)
  from releases rel
 where rel.id = r.release_id;

create function rollouts_release_committed_at() returns trigger language plpgsql as $$
begin
    if new.release_committed_at is null then
        select coalesce(committed_at, created_at) into new.release_committed_at
          from releases where id = new.release_id;
    end if;
    return new;
end
$$;

create trigger rollouts_release_committed_at before insert on rollouts
    for each row execute function rollouts_release_committed_at();

-- An environment's finished deploys and promotions by finish time (delivery metrics).
create index rollouts_environment_finished_idx on rollouts (environment_id, finished_at)
    where kind in ('deploy', 'promote');
