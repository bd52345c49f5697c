-- The PostgreSQL twin of this migration makes a release change's notice part of its
-- transaction (a trigger sending NOTIFY to the other replicas). SQLite serves one replica, which
-- notifies its own devices after the commit. Both drop 0015's index, which served a re-announce
-- on taking the controller lease that the trigger made unnecessary.
DROP INDEX releases_by_change;
