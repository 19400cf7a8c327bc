"""``python -m coordinator``."""

from .cli import main

main()
