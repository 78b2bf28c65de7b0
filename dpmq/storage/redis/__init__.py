"""The Redis engine (several DPMQ processes as one broker): the engine over Redis Streams
(:mod:`.engine`), its Lua scripts (:mod:`.lua`), the feed of other processes' messages and events
(:mod:`.feed`), the console's queries (:mod:`.browse`), subscription owners (:mod:`.owners`) and
the console reports every process answers (:mod:`.reports`)."""
