from arbiter.events.testing import event_types, kafka_bootstrap, kafka_broker

__all__ = ["event_types", "kafka_bootstrap", "kafka_broker"]
