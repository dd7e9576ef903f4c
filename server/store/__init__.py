"""The Redis boundary: the key schema, the Lua scripts and every call that runs them.

Nothing else in the node talks to Redis by hand: :mod:`.redis` makes the
clients and maps Redis errors, :mod:`.scripts` registers the scripts once,
:mod:`.replies` decodes their replies into named fields, :mod:`.keys` names
every key.
"""
