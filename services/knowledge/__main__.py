"""Entry point: `python -m services.knowledge`."""

from services.knowledge.server import main
from services.runtime.server import run

if __name__ == "__main__":
    run(main)
