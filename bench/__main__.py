"""`python -m bench`: runs every benchmark module and prints its figures."""

from __future__ import annotations

import asyncio

from bench import (
    analytics_throughput,
    compare,
    grpc_floor,
    inference_latency,
    knowledge_eval,
    mesh_latency,
    openai_api,
    paced_cpu,
    ratelimit_burst,
    router_eval,
    startup,
    web_ttft,
)


def main() -> None:
    startup.main([])
    print()
    compare.main()
    print()
    asyncio.run(openai_api.main())
    print()
    asyncio.run(mesh_latency.main())
    print()
    grpc_floor.main()
    print()
    asyncio.run(paced_cpu.main())
    print()
    asyncio.run(inference_latency.main())
    print()
    router_eval.main()
    print()
    knowledge_eval.main()
    print()
    asyncio.run(analytics_throughput.main())
    print()
    asyncio.run(ratelimit_burst.main())
    print()
    asyncio.run(web_ttft.main())


if __name__ == "__main__":
    main()
