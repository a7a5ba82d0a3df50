-- An upload's file until it is parsed: the job that parses it may run on
-- another replica, or again after a lost worker.
ALTER TABLE mib_uploads ADD COLUMN data BLOB;
-- The job that parses it, kept apart from the report the parse writes.
ALTER TABLE mib_uploads ADD COLUMN job_id TEXT NOT NULL DEFAULT '';
