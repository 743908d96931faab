"""The `predictflow` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from predictflow import logconfig
from predictflow.settings import Settings, get_settings


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
    boot.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        default=0,
        help="also load N synthetic customers (ids SYN-...) into the online "
        "store, their ids to <data_dir>/synthetic_ids.txt (benchmarks at scale)",
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
    train = sub.add_parser(
        "train",
        help="train, cross-validate, evaluate and register a new version; "
        "champion moves only if at least as good",
    )
    train.add_argument(
        "--seed", type=int, help="XGBoost seed (default: the recipe's, 7)"
    )
    promote = sub.add_parser(
        "promote", help="point an alias (default: the champion's) at a version"
    )
    promote.add_argument("version", help="registered version number")
    promote.add_argument("--alias", help="alias to move (default: champion)")
    models = sub.add_parser(
        "models", help="registered versions: aliases, ROC AUC, creation time"
    )
    models.add_argument("--json", action="store_true", help="a JSON list of objects")
    rep = sub.add_parser(
        "report",
        help="a version's evaluation (plots, deciles, HTML) in var/reports/<version>/",
    )
    rep.add_argument("--version", help="registered version (default: the champion)")
    rep.add_argument(
        "--recompute",
        action="store_true",
        help="recompute from the registered model and the committed data even "
        "when the run logged its evaluation",
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
    logconfig.configure(settings.log_level)

    if args.command == "bootstrap":
        from predictflow import bootstrap

        result = bootstrap.run(settings, force=args.force)
        sys.stdout.write(
            f"ready: model {result.bento_tag} (ROC AUC {result.champion_roc_auc:.4f}), "
            f"{result.customers} customers in the {settings.feast.online_store} "
            "online store\n"
        )
        if args.synthetic:
            from predictflow import synthetic

            loaded = synthetic.load(
                settings, args.synthetic, progress=sys.stderr.isatty()
            )
            sys.stdout.write(
                f"synthetic: {loaded.customers} customers "
                f"({'written' if loaded.written else 'already there'}) "
                f"in {loaded.seconds:.1f} s, ids in {loaded.ids_file}\n"
            )
    elif args.command in ("train", "promote", "models", "report"):
        return _lifecycle(args, settings)
    elif args.command == "publish":
        import asyncio

        # The Kafka side lives in consumers/: the core imports no transport.
        from consumers import publish

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


def _lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    """`train`, `promote`, `models`, `report`: the model lifecycle commands."""
    from predictflow import registry
    from predictflow.errors import DataIntegrityError

    # tqdm bars on every artifact download; the logs say what happened.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = sys.stdout.write
    try:
        if args.command == "train":
            _train(settings, args.seed)
        elif args.command == "promote":
            alias = args.alias or settings.mlflow.champion_alias
            try:
                previous = registry.set_alias(settings, args.version, alias)
            except registry.UnknownVersion as exc:
                raise registry.UnknownVersion(f"{exc}; {alias} not moved") from None
            out(f"{alias}: version {previous or 'none'} -> {args.version}\n")
        elif args.command == "models":
            _models(settings, as_json=args.json)
        else:
            from predictflow import report

            done = report.write_report(settings, args.version, recompute=args.recompute)
            how = "recomputed" if done.recomputed else "from the logged run"
            out(f"report of version {done.version} ({how}): {done.index}\n")
    except (LookupError, DataIntegrityError) as exc:
        sys.stderr.write(f"predictflow {args.command}: {exc}\n")
        return 1
    return 0


def _train(settings: Settings, seed: int | None) -> None:
    from predictflow import bootstrap, training

    params = (
        training.XGBoostParams() if seed is None else training.XGBoostParams(seed=seed)
    )
    result = bootstrap.train_and_register(settings, params)
    alias = settings.mlflow.champion_alias
    previous = result.previous
    if result.promoted:
        was = f"version {previous.version}" if previous else "none"
        moved = f"{alias} moved to version {result.version} (was {was})"
    else:
        assert previous is not None  # noqa: S101 - only a champion can be kept
        moved = (
            f"{alias} stays version {previous.version} "
            f"(ROC AUC {previous.roc_auc:.4f} > {result.metrics['roc_auc']:.4f})"
        )
    sys.stdout.write(
        f"registered {settings.mlflow.model_name} version {result.version} "
        f"(seed {params.seed}, run {result.run_id})\n"
        f"held-out ROC AUC {result.metrics['roc_auc']:.4f}\n"
        f"CV ROC AUC {result.cv.mean:.4f} ± {result.cv.std:.4f} "
        f"({len(result.cv.fold_roc_auc)} folds)\n"
        f"{moved}\n"
    )


def _models(settings: Settings, *, as_json: bool) -> None:
    from predictflow import registry

    versions = registry.list_versions(settings)
    if as_json:
        sys.stdout.write(json.dumps([v.as_json() for v in versions], indent=2) + "\n")
        return
    lines = [
        f"{'VERSION':<8} {'ALIASES':<22} {'ROC AUC':<8} {'CV ROC AUC':<16} CREATED"
    ]
    for v in versions:
        auc = f"{v.roc_auc:.4f}" if v.roc_auc is not None else "-"
        mean = v.metrics.get("cv_roc_auc_mean")
        std = v.metrics.get("cv_roc_auc_std")
        cv = f"{mean:.4f} ± {std:.4f}" if mean is not None and std is not None else "-"
        aliases = ",".join(v.aliases) or "-"
        created = v.created.isoformat(timespec="seconds")
        lines.append(f"{v.version:<8} {aliases:<22} {auc:<8} {cv:<16} {created}")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
