"""Entry point: `python -m services.router`."""

from services.router.server import main
from services.runtime.server import run

if __name__ == "__main__":
    run(main)
