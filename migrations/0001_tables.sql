-- pulsewatch tables. Every statement runs with search_path set to the configured schema;
-- `pulsewatch migrate` applies each file once, in a transaction, and records it in
-- schema_migration. Partitions are created by `pulsewatch partitions maintain`.

-- Raw beats, one row per heartbeat record, partitioned by day of event time.
CREATE TABLE heartbeat_event (
    app_id               text        NOT NULL,
    instance_id          text        NOT NULL,
    seq                  bigint      NOT NULL,
    sent_at              timestamptz NOT NULL,
    interval_ms          integer     NOT NULL,
    status               text        NOT NULL CHECK (status IN ('STARTING', 'OK', 'DEGRADED', 'STOPPING')),
    memory_used_bytes    bigint,
    memory_limit_bytes   bigint,
    cpu_ratio            real,
    disk_used_ratio      real,
    db_pool_size         integer,
    db_pool_in_use       integer,
    db_pool_waiting      integer,
    threads              integer,
    open_fds             integer,
    request_queue_depth  integer,
    sessions_active      bigint,
    requests_total       bigint,
    errors_total         bigint,
    slow_requests_total  bigint,
    cache_hits_total     bigint,
    cache_misses_total   bigint,
    latency_p95_ms       real,
    latency_p99_ms       real,
    db_query_p95_ms      real,
    labels               jsonb       NOT NULL DEFAULT '{}',
    -- Where the beat came from on the heartbeats topic: lineage, and a way to audit replays.
    kafka_partition      integer     NOT NULL,
    kafka_offset         bigint      NOT NULL
) PARTITION BY RANGE (sent_at);

CREATE INDEX heartbeat_event_app_sent_at ON heartbeat_event (app_id, sent_at);

-- One row per application and minute of event time.
CREATE TABLE metric_rollup_1m (
    app_id                  text        NOT NULL,
    minute                  timestamptz NOT NULL,
    beats                   integer     NOT NULL,
    instances               integer     NOT NULL,
    memory_used_bytes_mean  double precision,
    memory_used_bytes_max   bigint,
    memory_used_ratio_max   double precision,
    cpu_ratio_mean          double precision,
    cpu_ratio_max           double precision,
    disk_used_ratio_max     double precision,
    db_pool_in_use_mean     double precision,
    db_pool_in_use_max      integer,
    db_pool_waiting_max     integer,
    threads_mean            double precision,
    threads_max             integer,
    open_fds_mean           double precision,
    open_fds_max            integer,
    request_queue_depth_max integer,
    sessions_active_mean    double precision,
    sessions_active_max     bigint,
    latency_p95_ms_mean     double precision,
    latency_p95_ms_max      double precision,
    latency_p99_ms_max      double precision,
    db_query_p95_ms_max     double precision,
    -- Rates from counter deltas (resets handled), per second of event time.
    requests_per_s          double precision,
    errors_per_s            double precision,
    slow_requests_per_s     double precision,
    error_ratio             double precision,
    cache_hit_ratio         double precision,
    PRIMARY KEY (app_id, minute)
) PARTITION BY RANGE (minute);

-- Every alert transition published on the alerts topic, partitioned by month of event_at.
CREATE TABLE alert_event (
    alert_id          text        NOT NULL,
    app_id            text        NOT NULL,
    instance_id       text,
    kind              text        NOT NULL,
    severity          text        NOT NULL CHECK (severity IN ('WARNING', 'CRITICAL')),
    state             text        NOT NULL CHECK (state IN ('FIRING', 'RESOLVED')),
    started_at        timestamptz NOT NULL,
    event_at          timestamptz NOT NULL,
    emitted_at        timestamptz NOT NULL,
    value             double precision,
    threshold         double precision,
    summary           text        NOT NULL,
    evidence          jsonb       NOT NULL DEFAULT '{}',
    recommendations   text[]      NOT NULL DEFAULT '{}',
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL
) PARTITION BY RANGE (event_at);

CREATE INDEX alert_event_alert_id ON alert_event (alert_id, event_at);
CREATE INDEX alert_event_app ON alert_event (app_id, event_at);

-- The current snapshot of each application, upserted from the app-state topic.
CREATE TABLE application (
    app_id           text        PRIMARY KEY,
    status           text        NOT NULL CHECK (status IN ('UP', 'DEGRADED', 'LATE', 'DOWN', 'STOPPED')),
    health           text        NOT NULL CHECK (health IN ('healthy', 'warning', 'critical')),
    instances_up     integer     NOT NULL,
    instances_total  integer     NOT NULL,
    last_seen        timestamptz,
    last_figures     jsonb       NOT NULL DEFAULT '{}',
    open_alerts      integer     NOT NULL DEFAULT 0,
    labels           jsonb       NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL
);

-- The next offset to read, per consumer group, topic and partition, written in the same
-- transaction as the rows it covers: the sink's exactly-once into PostgreSQL.
CREATE TABLE sink_offset (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
