"""``python -m nn4n``: the same as ``nn4n-train``."""
from .cli import main

main()
