"""Entry point: `python -m services.analytics`."""

from services.analytics.server import main
from services.runtime.server import run

if __name__ == "__main__":
    run(main)
