"""The queue: the claim protocol's policy (``claims``), each agent's ready heap (``view``), user operations (``ops``)."""
