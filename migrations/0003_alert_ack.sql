-- Operators' acknowledgements, one row per record of the alert-acks topic: ACK or UNACK of
-- one firing (alert_id, alert_started_at) of an alert. The latest row of a firing says
-- whether it is acknowledged; a new firing of the same alert id has a new started_at.
CREATE TABLE alert_ack (
    alert_id          text        NOT NULL,
    app_id            text        NOT NULL,
    alert_started_at  timestamptz NOT NULL,
    action            text        NOT NULL CHECK (action IN ('ACK', 'UNACK')),
    acked_by          text        NOT NULL,
    note              text,
    at                timestamptz NOT NULL,
    kafka_partition   integer     NOT NULL,
    kafka_offset      bigint      NOT NULL
);

CREATE INDEX alert_ack_firing ON alert_ack (alert_id, alert_started_at, at);
