-- A results database as scaling-study writes it with migrations 0001 to 0005 (sqlite3 .dump):
-- every later release must open it without re-running a migration.
BEGIN TRANSACTION;
CREATE TABLE calibrations (
	id INTEGER NOT NULL, 
	device VARCHAR(200) NOT NULL, 
	model VARCHAR(100) NOT NULL, 
	resolution INTEGER NOT NULL, 
	channels INTEGER NOT NULL, 
	batch_size INTEGER NOT NULL, 
	precision VARCHAR(10) NOT NULL, 
	images_per_s FLOAT NOT NULL, 
	mfu FLOAT, 
	peak_memory_bytes BIGINT, 
	details TEXT, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE evaluations (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	epoch INTEGER NOT NULL, 
	metric VARCHAR(100) NOT NULL, 
	value FLOAT NOT NULL, 
	compute FLOAT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_evaluations_point UNIQUE (job_id, epoch, metric), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE TABLE job_attempts (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	attempt INTEGER NOT NULL, 
	worker VARCHAR(200) NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	outcome VARCHAR(20), 
	message TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_job_attempts UNIQUE (job_id, attempt), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	study_id INTEGER NOT NULL, 
	spec_hash VARCHAR(32) NOT NULL, 
	spec TEXT NOT NULL, 
	model VARCHAR(100) NOT NULL, 
	params BIGINT NOT NULL, 
	flops_per_example BIGINT NOT NULL, 
	examples BIGINT NOT NULL, 
	epochs INTEGER NOT NULL, 
	seed INTEGER NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	attempts INTEGER NOT NULL, 
	epochs_done INTEGER NOT NULL, 
	worker VARCHAR(200), 
	lease_expires DATETIME, 
	error TEXT, 
	provenance TEXT, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_jobs_study_spec UNIQUE (study_id, spec_hash), 
	CONSTRAINT ck_jobs_state CHECK (state IN ('pending', 'running', 'done', 'failed', 'diverged', 'cancelled', 'pruned')), 
	FOREIGN KEY(study_id) REFERENCES studies (id)
);
CREATE TABLE metric_kinds (
	id INTEGER NOT NULL, 
	study_id INTEGER NOT NULL, 
	metric VARCHAR(100) NOT NULL, 
	kind VARCHAR(20) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_metric_kinds UNIQUE (study_id, metric), 
	FOREIGN KEY(study_id) REFERENCES studies (id)
);
CREATE TABLE prunings (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	decided_at DATETIME NOT NULL, 
	previous_state VARCHAR(20) NOT NULL, 
	epochs_done INTEGER NOT NULL, 
	confidence FLOAT NOT NULL, 
	epoch INTEGER NOT NULL, 
	compute FLOAT NOT NULL, 
	predicted FLOAT NOT NULL, 
	low FLOAT NOT NULL, 
	high FLOAT NOT NULL, 
	envelope FLOAT NOT NULL, 
	evidence TEXT NOT NULL, 
	fit TEXT NOT NULL, 
	decided_by VARCHAR(200) NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);
CREATE TABLE schema_migrations (
	name VARCHAR(200) NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (name)
);
INSERT INTO "schema_migrations" VALUES('0001_initial','2026-01-01 00:00:00.000000');
INSERT INTO "schema_migrations" VALUES('0002_job_attempts','2026-01-01 00:00:00.000000');
INSERT INTO "schema_migrations" VALUES('0003_calibrations','2026-01-01 00:00:00.000000');
INSERT INTO "schema_migrations" VALUES('0004_pruning','2026-01-01 00:00:00.000000');
INSERT INTO "schema_migrations" VALUES('0005_metric_kinds','2026-01-01 00:00:00.000000');
CREATE TABLE studies (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	grid_path TEXT NOT NULL, 
	grid_toml TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE INDEX ix_evaluations_job_id ON evaluations (job_id);
CREATE INDEX ix_job_attempts_job_id ON job_attempts (job_id);
CREATE INDEX ix_prunings_job_id ON prunings (job_id);
COMMIT;
