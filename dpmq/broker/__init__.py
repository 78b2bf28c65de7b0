"""The broker: publish and its bounded buffer (:mod:`.slots`), the pump, start and stop
(:mod:`.broker`), who owns a subscription (:mod:`.ownership`), and the housekeeping threads that
save cursors and purge what retention lets go (:mod:`.housekeeping`)."""
