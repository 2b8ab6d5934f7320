"""Heartbeats for pulsewatch from a Python application, and handlers run on its alerts."""

from .emitter import Emitter, alerts_topic_for, default_instance_id
from .encoding import decode_alert, encode_avro, encode_json
from .helpers import Throttle, collect_garbage, recycle_pool

__all__ = [
    "Emitter",
    "Throttle",
    "alerts_topic_for",
    "collect_garbage",
    "decode_alert",
    "default_instance_id",
    "encode_avro",
    "encode_json",
    "recycle_pool",
]
__version__ = "0.1.0"
