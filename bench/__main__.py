"""`python -m bench`: runs every benchmark module and prints its figures."""

from __future__ import annotations

import asyncio

from bench import mesh_latency


def main() -> None:
    asyncio.run(mesh_latency.main())


if __name__ == "__main__":
    main()
