"""PredictFlow: churn scoring over REST and Kafka from one scoring core."""
