"""The Kafka request/reply front door: a thin adapter around the scoring core."""
