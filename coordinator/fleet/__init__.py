"""The fleet: agent processes (``agent``), the supervisor behind ``run`` (``supervisor``), run folders (``workspace``)."""
