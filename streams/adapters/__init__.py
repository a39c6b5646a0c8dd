"""Adapters of :mod:`streams.ports`: in memory, Redis, Kafka."""
