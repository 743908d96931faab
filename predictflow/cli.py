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
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
