-- Webhooks: the key generation that sealed an app's webhook secret (as credentials.key_id does,
-- so a master-key rotation can still open it; null means sealed before this column existed,
-- under the key that was current then), and the index behind an app's delivery list.
alter table apps add column webhook_secret_key_id text;
create index webhook_deliveries_app_idx on webhook_deliveries (app_id, id desc);
