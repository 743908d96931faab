"""The REST door of the service: limits, tokens, answers, logs (rest.door)."""
