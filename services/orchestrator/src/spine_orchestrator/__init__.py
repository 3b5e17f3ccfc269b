"""Flow engine: the execution state machine on the transactional loop."""
