"""pm: an event-sourced process manager on Kafka for LLM agent workflows."""

__version__ = "0.1.0"
