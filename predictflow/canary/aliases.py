"""Which registry versions a canary compares, and the `champion` move at 100 %.

Only the script path moves aliases (scripts/canary_promote.py); the
registry calls are predictflow.registry's.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from predictflow.canary.plan import CHALLENGER

if TYPE_CHECKING:
    from predictflow.settings import Settings


class Aliases:
    """The registry's `champion` and `challenger` (predictflow.registry).

    A dry run reads the registry but prints the champion move instead of
    making it.
    """

    def __init__(self, settings: Settings, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.champion = settings.mlflow.champion_alias

    def version(self, alias: str) -> str | None:
        """The version `alias` names (None: no such alias)."""
        from predictflow.registry import alias_version

        return alias_version(self.settings, alias)

    def move_champion(self, version: str) -> None:
        """Point `champion` at `version` (the `predictflow promote` move)."""
        if self.dry_run:
            line = {
                "kind": "MLflowAlias",
                "model": self.settings.mlflow.model_name,
                "name": self.champion,
                "patch": {"version": version},
            }
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
            sys.stdout.flush()
            return
        from predictflow.registry import set_alias

        set_alias(self.settings, version, self.champion)


@dataclass(frozen=True)
class Models:
    """Which registered versions the canary compares (read before step one)."""

    champion: str | None
    challenger: str | None


class ChallengerMoved(RuntimeError):
    """`challenger` changed during the canary: what was judged is not what it names."""


def registry_settings(uri: str | None) -> Settings | None:
    """Settings on the registry to use, or None when none is configured.

    Only a registry named on purpose counts (the flag, `MLFLOW_TRACKING_URI`,
    `PREDICTFLOW_MLFLOW__TRACKING_URI`): the settings' fallback, a local SQLite
    file, is never the cluster's registry.
    """
    from predictflow.settings import Settings

    settings = Settings()
    uri = uri or settings.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    mlflow = settings.mlflow.model_copy(update={"tracking_uri": uri})
    return settings.model_copy(update={"mlflow": mlflow})


def read_models(aliases: Aliases | None) -> Models:
    """The champion and challenger versions, said to the operator."""
    if aliases is None:
        say(
            "no MLflow registry configured (--mlflow-tracking-uri, "
            "MLFLOW_TRACKING_URI or PREDICTFLOW_MLFLOW__TRACKING_URI): champion "
            "will not move; only the pod template is promoted"
        )
        return Models(None, None)
    models = Models(aliases.version(aliases.champion), aliases.version(CHALLENGER))
    if models.challenger is None:
        say(
            f"no {CHALLENGER} alias in the registry: canary pods serve their "
            f"image's model; {aliases.champion} will not move (version "
            f"{models.champion or 'none'}); only the pod template is promoted"
        )
    else:
        say(
            f"canary follows {CHALLENGER} = version {models.challenger}; "
            f"{aliases.champion} is version {models.champion or 'none'}"
        )
    return models


def champion_stays(aliases: Aliases | None, models: Models) -> None:
    """Say that the champion was left where it was."""
    if aliases is None:
        say("champion not touched (no registry)")
    else:
        say(f"{aliases.champion} stays version {models.champion or 'none'}")


def promote_champion(aliases: Aliases | None, models: Models) -> None:
    """At 100 %: `champion` to the version judged, if the registry names one."""
    if aliases is None or models.challenger is None:
        champion_stays(aliases, models)
        return
    now = aliases.version(CHALLENGER)
    if now != models.challenger:
        raise ChallengerMoved(
            f"{CHALLENGER} moved from version {models.challenger} to {now} during "
            f"the canary; {aliases.champion} not moved"
        )
    if models.challenger == models.champion:
        champion_stays(aliases, models)
        return
    aliases.move_champion(models.challenger)
    would = "would move (dry run)" if aliases.dry_run else "moved"
    say(
        f"{aliases.champion} {would} from version {models.champion or 'none'} "
        f"to {models.challenger}"
    )


def say(message: str) -> None:
    """Progress for the operator (stderr; stdout carries dry-run patches)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
