"""``python -m srtool`` (also what ``torchrun -m srtool`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
