"""Entry point: `python -m services.inference`."""

from services.inference.server import main
from services.runtime.server import run

if __name__ == "__main__":
    run(main)
