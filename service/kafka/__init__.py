"""Our side of the Kafka client: what aiokafka does not do for us."""
