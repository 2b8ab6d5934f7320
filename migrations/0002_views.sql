-- Views for analysts.

-- Every application with its health, worst first.
CREATE VIEW current_health AS
SELECT app_id, status, health, instances_up, instances_total, last_seen, open_alerts, updated_at,
       now() - last_seen AS silent_for
FROM application
ORDER BY CASE health WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, app_id;

-- The latest transition of every alert id whose latest transition is FIRING.
CREATE VIEW open_alerts AS
SELECT *
FROM (
    SELECT DISTINCT ON (alert_id) *
    FROM alert_event
    ORDER BY alert_id, event_at DESC, kafka_offset DESC
) latest
WHERE state = 'FIRING';

-- Open leak alerts with the evidence an on-call engineer reads first.
CREATE VIEW leak_suspects AS
SELECT o.app_id, o.instance_id, o.kind, o.severity, o.started_at, o.event_at,
       o.evidence ->> 'slope_per_hour'        AS slope_per_hour,
       o.evidence ->> 'projected_exhaustion'  AS projected_exhaustion,
       o.summary, o.recommendations, a.status, a.health
FROM open_alerts o
LEFT JOIN application a USING (app_id)
WHERE o.kind LIKE '%LEAK_SUSPECTED';
