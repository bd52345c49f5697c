-- The app a device enrolled for; fixed at registration (Sync cannot move a device between apps).
ALTER TABLE devices ADD COLUMN app_id TEXT NOT NULL DEFAULT '';
