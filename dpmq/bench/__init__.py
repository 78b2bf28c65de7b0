"""``dpmq bench``: the scenarios and their report (:mod:`.run`), and the load generators' parts
(:mod:`.kit`)."""
