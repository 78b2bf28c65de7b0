"""The broker: publish and its bounded buffer (:mod:`.slots`), start and stop (:mod:`.broker`), the
pacing queue and its pump (:mod:`.pacing`), the connected consumers (:mod:`.consumers`), who owns
a subscription (:mod:`.ownership`), and the housekeeping threads that save cursors and purge what
retention lets go (:mod:`.housekeeping`)."""
