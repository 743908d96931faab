"""The `predictflow` command line."""

from __future__ import annotations

import argparse
import sys

from predictflow import log
from predictflow.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    """Entry point of `predictflow`."""
    parser = argparse.ArgumentParser(prog="predictflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    boot = sub.add_parser(
        "bootstrap",
        help="data -> train -> register -> feast apply -> materialize -> Bento import",
    )
    boot.add_argument(
        "--force",
        action="store_true",
        help="retrain and rewrite the feature source even if nothing changed",
    )
    pub = sub.add_parser(
        "publish", help="send churn requests to Kafka and print the replies"
    )
    what = pub.add_mutually_exclusive_group(required=True)
    what.add_argument("--customer-id", help="score this customer")
    what.add_argument(
        "--file", help="a JSON-lines file of ChurnRequest objects ('-': stdin)"
    )
    pub.add_argument(
        "--wait",
        action="store_true",
        help="wait for the reply of --customer-id (--file always waits)",
    )
    pub.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for replies"
    )
    pub.add_argument(
        "--bootstrap-servers",
        help="Kafka brokers (default: PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS, "
        "else 127.0.0.1:9092)",
    )
    token = sub.add_parser("token", help="bearer tokens of the REST door")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    new = token_sub.add_parser(
        "new", help="print a new random token once, and its tokens-file line"
    )
    new.add_argument("name", help="who the token is for (shown in logs and metrics)")
    args = parser.parse_args(argv)
    if args.command == "token":
        from predictflow import auth

        made = auth.new_token(args.name)
        sys.stdout.write(
            f"token (shown once; give it to the caller): {made.token}\n"
            f"line for PREDICTFLOW_AUTH__TOKENS_FILE: {made.line}\n"
        )
        return 0
    settings = get_settings()
    log.configure(settings.log_level)

    if args.command == "bootstrap":
        from predictflow import bootstrap

        result = bootstrap.run(settings, force=args.force)
        sys.stdout.write(
            f"ready: model {result.bento_tag} (ROC AUC {result.champion_roc_auc:.4f}), "
            f"{result.customers} customers in the {settings.feast.online_store} "
            "online store\n"
        )
    elif args.command == "publish":
        import asyncio

        from predictflow import publish

        brokers = (
            args.bootstrap_servers
            or settings.kafka.bootstrap_servers
            or "127.0.0.1:9092"
        )
        if args.customer_id:
            return asyncio.run(
                publish.one(
                    brokers, settings, args.customer_id, args.wait, args.timeout
                )
            )
        if args.file == "-":
            requests, bad = publish.read_requests(sys.stdin)
        else:
            with open(args.file, encoding="utf-8") as f:
                requests, bad = publish.read_requests(f)
        code = asyncio.run(publish.many(brokers, settings, requests, args.timeout))
        return code or (1 if bad else 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
