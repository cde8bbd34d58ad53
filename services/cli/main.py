"""`tiermesh`: run the mesh (`up`), talk to it (`chat`), fill its knowledge base (`ingest`), check it (`health`).

Commands import only what they need, so `tiermesh chat` and `tiermesh health` start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence

from services.runtime import config


def _cmd_up(args: argparse.Namespace) -> int:
    from services.cli.up import up

    return asyncio.run(up(args.timeout, args.ingest, args.replicas))


def _cmd_chat(args: argparse.Namespace) -> int:
    from services.cli.chat import chat

    message = " ".join(args.message)
    if message == "-":
        message = sys.stdin.read()
    return asyncio.run(chat(args, message))


def _cmd_route(args: argparse.Namespace) -> int:
    from services.cli.route import route, route_eval, route_stats

    if args.stats:
        if args.message or args.eval:
            print("tiermesh route: --stats takes no message and no --eval", file=sys.stderr)
            return 2
        return asyncio.run(route_stats(args.since, args.json, args.target))
    if args.eval:
        if args.message:
            print("tiermesh route: give a message or --eval FILE, not both", file=sys.stderr)
            return 2
        return route_eval(args.eval, args.json)
    if not args.message:
        print("tiermesh route: give the message to route (or --eval FILE.jsonl)", file=sys.stderr)
        return 2
    message = " ".join(args.message)
    if message == "-":
        message = sys.stdin.read()
    return route(message, args.segment, args.json, args.tier)


def _cmd_models(args: argparse.Namespace) -> int:
    from services.cli.models import models

    return asyncio.run(models(args.json))


def _cmd_ingest(args: argparse.Namespace) -> int:
    from services.cli.knowledge import ingest

    return asyncio.run(ingest(args.paths, args.collection, args.target, args.timeout))


def _cmd_search(args: argparse.Namespace) -> int:
    from services.cli.knowledge import search

    return asyncio.run(
        search(" ".join(args.query), args.top_k, args.collection, args.target, args.json, args.per_document)
    )


def _cmd_spend(args: argparse.Namespace) -> int:
    from services.cli.spend import spend

    return asyncio.run(spend(args.user, args.segment, args.since, args.watch, args.json, args.target, args.team))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from services.cli.spend import migrate

    return asyncio.run(migrate())


def _cmd_train_router(args: argparse.Namespace) -> int:
    from services.cli.train_router import train_router

    return train_router(args.data, args.out)


def _cmd_keys(args: argparse.Namespace) -> int:
    from services.cli.keys import keys

    return asyncio.run(keys(args))


def _int_from(lo: int, hi: int, low_means: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `lo` to `hi` (`low_means` says what `lo` does)."""
    what = f"{lo} ({low_means})" if low_means else str(lo)

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be a whole number from {what} to {hi}, got {raw[:40]!r}")
        return value

    return parse


def _cmd_render_envoy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway import envoy

    try:
        path = envoy.write(config.load(), Path(args.out) if args.out else None, target=args.target)
        if not args.no_validate:
            envoy.validate(path)
    except config.ConfigError as exc:
        print(f"tiermesh render-envoy: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from gateway import keys

    try:
        ttl = keys.parse_ttl(args.ttl)
        print(keys.mint(config.load(), args.user, args.segment, ttl, role=args.role, team=args.team))
    except ValueError as exc:
        print(f"tiermesh token: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from services.cli.health import health

    return asyncio.run(health(args.json))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiermesh", description="tiermesh: an LLM gateway as a gRPC service mesh.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run simulator, services and Envoy until Ctrl-C")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every part to be healthy")
    up.add_argument(
        "--ingest", nargs="*", default=[], metavar="PATH", help="once healthy, ingest these files or folders"
    )
    up.add_argument(
        "--replicas",
        default="",
        metavar="NAME=N,...",
        help="run services more than once behind Envoy and each other, e.g. router=2,inference=3",
    )
    up.set_defaults(func=_cmd_up)

    chat = sub.add_parser("chat", help="stream an answer through the edge")
    chat.add_argument("message", nargs="+", help="the message ('-' reads it from stdin)")
    chat.add_argument("--target", help="edge address host:port (default: services.envoy from config)")
    chat.add_argument("--tier", type=int, default=0, help="pin a tier (1-4); default lets the router decide")
    chat.add_argument("--max-tokens", type=int, default=0, help="cap the answer length in tokens")
    chat.add_argument("--no-cache", action="store_true", help="ask for a fresh answer")
    chat.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    chat.add_argument("--json", action="store_true", help="print every event as one JSON line")
    chat.add_argument("--token", help="bearer token (default: $TIERMESH_TOKEN, else a dev token)")
    chat.add_argument("--user", default="dev", help="user of the dev token (default: dev)")
    chat.add_argument(
        "--segment",
        choices=["standard", "vip", "enterprise"],
        default="standard",
        help="segment of the dev token (default: standard)",
    )
    chat.set_defaults(func=_cmd_chat)

    route = sub.add_parser("route", help="show the route decision for a message (no model is called)")
    route.add_argument("message", nargs="*", help="the message ('-' reads it from stdin)")
    route.add_argument(
        "--eval",
        metavar="FILE.jsonl",
        help="accuracy and confusion matrices on your labelled messages: one JSON object per line with "
        "text, intent, complexity and optionally segment, tier and lang",
    )
    route.add_argument("--segment", choices=["standard", "vip", "enterprise"], default="standard")
    route.add_argument("--tier", type=int, default=0, choices=[0, 1, 2, 3, 4], help="pin a tier, as a client could")
    route.add_argument("--json", action="store_true", help="print one JSON object")
    route.add_argument(
        "--stats",
        action="store_true",
        help="which rules fired in the sampled decisions (router.audit) and what they cost, from Analytics",
    )
    route.add_argument("--since", default="24h", help="with --stats: how far back: 30m, 24h, 7d (default 24h)")
    route.add_argument("--target", help="with --stats: Analytics address host:port (default from config)")
    route.set_defaults(func=_cmd_route)

    models = sub.add_parser("models", help="list each tier's deployments with price, health and breaker state")
    models.add_argument("--json", action="store_true", help="print one JSON array")
    models.set_defaults(func=_cmd_models)

    ingest = sub.add_parser(
        "ingest",
        help="add Markdown, text and HTML files (folders recursively) to the knowledge base",
        description="Add documents to the knowledge base. A document's id is its path under the folder given, "
        "without extension; ingesting a file again replaces it (unchanged files are skipped). "
        "Exit code 3 when some files were skipped.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    ingest.add_argument("--collection", help="the tenant's collection (default: knowledge.default_collection)")
    ingest.add_argument("--target", help="Knowledge address host:port (default: services.knowledge from config)")
    ingest.add_argument("--timeout", type=float, default=300.0, help="deadline per batch, in seconds")
    ingest.set_defaults(func=_cmd_ingest)

    search = sub.add_parser("search", help="search the knowledge base")
    search.add_argument("query", nargs="+", help="what to look for")
    search.add_argument("--top-k", type=_int_from(1, 50), default=5, help="passages to show, 1 to 50 (default 5)")
    search.add_argument(
        "--per-document",
        type=_int_from(0, 50, "no cap"),
        default=0,
        help="at most this many passages of one document, 0 (no cap, the default) to 50; "
        "router.knowledge.passages_per_document is what chats use",
    )
    search.add_argument("--collection", help="the tenant's collection (default: knowledge.default_collection)")
    search.add_argument("--target", help="Knowledge address host:port (default: services.knowledge from config)")
    search.add_argument("--json", action="store_true", help="print one JSON array")
    search.set_defaults(func=_cmd_search)

    spend = sub.add_parser("spend", help="tokens and cost by user, segment, tier, model and team")
    spend.add_argument("--user", default="", help="only this user")
    spend.add_argument("--segment", choices=["standard", "vip", "enterprise"], default="", help="only this segment")
    spend.add_argument("--team", default="", help="only the requests of this team's API keys")
    spend.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d, 4w (default 24h)")
    spend.add_argument("--watch", action="store_true", help="this month's totals, redrawn live as usage arrives")
    spend.add_argument("--json", action="store_true", help="print JSON (one object per update with --watch)")
    spend.add_argument("--target", help="Analytics address host:port (default: services.analytics from config)")
    spend.set_defaults(func=_cmd_spend)

    migrate = sub.add_parser("migrate", help="create the analytics database if needed and apply its migrations")
    migrate.set_defaults(func=_cmd_migrate)

    retrain = sub.add_parser(
        "train-router", help="retrain the routing models with your labelled messages (kept only if not worse)"
    )
    retrain.add_argument("--data", required=True, help="a folder of *.jsonl labelled messages (route --eval's format)")
    retrain.add_argument("--out", help="the model file to write (default: <data_dir>/router-models.json)")
    retrain.set_defaults(func=_cmd_train_router)

    keys = sub.add_parser("keys", help="API keys: create (shown once), list, revoke (operators)")
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="create|list|revoke")
    create = key_actions.add_parser("create", help="make a key; prints it once")
    create.add_argument("--user", required=True, help="the identity the key acts as (like a token's sub)")
    create.add_argument("--segment", choices=["standard", "vip", "enterprise"], required=True)
    create.add_argument("--team", default="", help="a team, for rate limits per team")
    create.add_argument("--budget-usd", type=float, default=0.0, help="the user's monthly budget in USD")
    create.add_argument("--expires", default="", help="lifetime: 30m, 24h, 90d, 52w (default: never)")
    create.add_argument("--role", choices=["operator"], default="", help="operator: may read every user's spend")
    listing = key_actions.add_parser("list", help="list keys (never their secrets), newest first")
    listing.add_argument("--user", default="", help="only this user's keys")
    listing.add_argument("--all", action="store_true", help="revoked and expired keys too")
    revoke = key_actions.add_parser("revoke", help="revoke a key for good; the edge refuses it within a second")
    revoke.add_argument("id", help="the key's id (key_...), from `tiermesh keys list`")
    for action in (create, listing, revoke):
        action.add_argument("--json", action="store_true", help="print JSON")
        action.add_argument("--target", help="Analytics address host:port (default: services.analytics from config)")
        action.set_defaults(func=_cmd_keys)

    token = sub.add_parser("token", help="mint a development token (signed with the dev key)")
    token.add_argument("--user", required=True, help="the token's subject")
    token.add_argument("--segment", choices=["standard", "vip", "enterprise"], default="standard")
    token.add_argument("--ttl", default="1h", help="lifetime: 90s, 15m, 1h, 7d (default 1h)")
    token.add_argument(
        "--role", choices=["operator"], default="", help="operator: may read every user's spend and the model catalog"
    )
    token.add_argument("--team", default="", help="the token's team: its rate limits and budget apply")
    token.set_defaults(func=_cmd_token)

    render = sub.add_parser("render-envoy", help="write Envoy's bootstrap for this config (and validate it)")
    render.add_argument(
        "--target",
        choices=["local", "k8s"],
        default="local",
        help="k8s: listen as configured (0.0.0.0 in a pod) and add the :8081 probe listener for kubelet and Prometheus",
    )
    render.add_argument("--out", help="where to write the binary bootstrap (default: <data_dir>/envoy.pb)")
    render.add_argument("--no-validate", action="store_true", help="skip `envoy --mode validate`")
    render.set_defaults(func=_cmd_render_envoy)

    health = sub.add_parser("health", help="report each part's health")
    health.add_argument("--json", action="store_true", help="print one JSON object")
    health.set_defaults(func=_cmd_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except config.ConfigError as exc:
        print(f"tiermesh: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tiermesh search ... | head`): stop quietly, as Unix tools do.
        # Later writes (and the interpreter's flush at exit) go nowhere instead of failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
