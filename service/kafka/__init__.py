"""Our side of the Kafka client: what aiokafka does not do for us.

``client`` (connection options), ``admin`` (topic creation), ``consumer`` (the pipeline's group
member and group watch), ``poison``/``raw_records`` (polling past undecodable records),
``group_recovery`` (freeing a wedged group), ``offsets`` (commit points for out-of-order work),
``publisher`` (acknowledged writes, refusals), ``transactions`` (exactly-once), ``embedded``
(the local Tansu broker).
"""
