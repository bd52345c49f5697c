-- The notice that a release changed is part of the change's transaction: PostgreSQL delivers a
-- NOTIFY when, and only when, the transaction that sent it commits. Every change of what devices
-- should run stamps `changed_at_ms` (0015), so a trigger on that column tells every replica's
-- listener (`notify::listen`), whichever replica made the change and even if it dies right after
-- its commit. `pace_window_ms` is the release policy's, or null for the listener's default.
CREATE FUNCTION walle_release_notice() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('walle_notices', json_build_object(
        'kind', 1,
        'task', NEW.task,
        'release_id', NEW.id,
        'pace_window_ms', CASE
            WHEN json_typeof(NEW.policy_json::json -> 'pace_window_ms') = 'number'
            THEN (NEW.policy_json::json ->> 'pace_window_ms')::numeric::bigint
        END
    )::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER releases_notice
    AFTER INSERT OR UPDATE OF changed_at_ms ON releases
    FOR EACH ROW EXECUTE FUNCTION walle_release_notice();

-- 0015's re-announce on taking the controller lease, which listed releases by this index, is
-- gone: the trigger above leaves no committed change without its notice.
DROP INDEX releases_by_change;
