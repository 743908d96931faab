"""Everything Kafka: the request/reply runner, its client, `predictflow publish`.

The runner is a thin adapter around the scoring core; `predictflow/` imports
no Kafka (tests/unit/test_core_knows_no_kafka.py).
"""
