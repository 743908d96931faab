#!/usr/bin/env bash
# Local images, built from Debian packages, PyPI and Maven jars only: no image
# registry is needed (none can be reached on the project's machines).
#
#   predictflow-local/debian:bookworm      debootstrap --variant=minbase, docker import
#   predictflow-local/python:3.11          Debian's python3.11 (the service's base)
#   predictflow-local/redis:bookworm       Debian's redis-server
#   predictflow-local/kafka:<version>      Apache Kafka (KRaft) from the jars of
#                                          scripts/kafka.sh, on Debian's Java 17
#   predictflow-local/prometheus:bookworm  Debian's prometheus
#   churn-predictor:<bento version>, :latest   the service (`service` below)
#
# Each image carries the label predictflow.inputs, a hash of what it is made
# from (its directory under images/, its parent's hash, the Debian mirror and
# suite, the Kafka version; for the service: the packed files, the model, the
# base image); an image whose label matches is not rebuilt, so a second run
# takes seconds.
#
# Usage: scripts/images.sh [COMMAND] [NAME...]
#   build [NAME...]    build what is missing or stale (NAME: debian python redis
#                      kafka prometheus; default all)
#   rebuild [NAME...]  build even when the label matches (e.g. a newer Debian)
#   service            the service image: `bentoml build` + `bentoml
#                      containerize` (what `make image` runs after bootstrap)
#   names              print NAME=IMAGE for each base image
#
# Environment (optional):
#   IMAGE_BASE     service base: local (predictflow-local/python), upstream
#                  (BentoML's default, python:3.11-slim from a registry) or auto
#                  (default): local when the engine is the one
#                  scripts/docker-engine.sh started, upstream otherwise
#   BENTOML        the bentoml program (default .venv/bin/bentoml)
#   DEBIAN_MIRROR  default: the mirror apt uses on this machine
#   DEBIAN_SUITE   default bookworm
#   PREDICTFLOW_CACHE_DIR  where scripts/kafka.sh caches the Kafka jars
#
# Needs a Docker engine (scripts/docker-engine.sh up) and, for the Debian
# base, root and debootstrap (scripts/docker-engine.sh up installs it).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGES="$REPO_ROOT/images"
SUITE="${DEBIAN_SUITE:-bookworm}"
PREFIX=predictflow-local
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$REPO_ROOT/scripts/kafka/pom.xml" | head -n 1)"
BENTOML="${BENTOML:-$REPO_ROOT/.venv/bin/bentoml}"
SERVICE_IMAGE=churn-predictor
EXTRA_CA_DIR=/usr/local/share/ca-certificates

declare -A NAME_OF=(
  [debian]="$PREFIX/debian:$SUITE"
  [python]="$PREFIX/python:3.11"
  [redis]="$PREFIX/redis:$SUITE"
  [kafka]="$PREFIX/kafka:$KAFKA_VERSION"
  [prometheus]="$PREFIX/prometheus:$SUITE"
)
ORDER=(debian python redis kafka prometheus)

log() { echo "images.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# The client that builds. BuildKit makes layers only for RUN and COPY, which
# matters on vfs (each layer is a full copy of the file system): with the
# buildx plugin, or Debian's docker.io 20.10 client, which has BuildKit built
# in. Else the legacy builder.
pick_builder() {
  BUILD_DOCKER="$(command -v docker)"
  BUILDKIT=0
  if docker buildx version >/dev/null 2>&1; then
    BUILDKIT=1
  elif [ -x /usr/bin/docker ] \
      && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.10\.'; then
    BUILD_DOCKER=/usr/bin/docker
    BUILDKIT=1
  fi
  export DOCKER_BUILDKIT="$BUILDKIT"
}

# The Debian mirror apt uses on this machine (deb822 or one-line sources).
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri="$(awk -v suite="$SUITE" '
    /^URIs:/ { u = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && u != "") { print u; exit } }
  ' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# The security archive beside the mirror, as Debian lays it out.
security_mirror() {
  case "$1" in
    */debian) echo "${1%/debian}/debian-security" ;;
    *) echo "http://deb.debian.org/debian-security" ;;
  esac
}

label_of() {
  docker image inspect --format '{{ index .Config.Labels "predictflow.inputs" }}' "$1" 2>/dev/null || true
}

size_of() {
  docker image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'
}

# inputs_hash NAME: sha256 of everything the image is made from.
inputs_hash() {
  local name="$1"
  {
    echo "image=$name suite=$SUITE mirror=$(debian_mirror)"
    (cd "$IMAGES/$name" 2>/dev/null && find . -type f | LC_ALL=C sort | xargs -r sha256sum)
    case "$name" in
      debian) sed -n '/^build_debian()/,/^}/p' "${BASH_SOURCE[0]}" ;;
      *) echo "parent=$(inputs_hash debian)" ;;
    esac
    if [ "$name" = python ]; then
      find "$EXTRA_CA_DIR" -type f -name '*.crt' 2>/dev/null | LC_ALL=C sort | xargs -r cat | sha256sum
    fi
    if [ "$name" = kafka ]; then
      echo "kafka=$KAFKA_VERSION"
      sha256sum <"$REPO_ROOT/scripts/kafka/pom.xml"
    fi
  } | sha256sum | cut -c1-16
}

build_debian() {
  local image="$1" hash="$2" mirror security rootfs
  [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
  command -v debootstrap >/dev/null 2>&1 || die "needs debootstrap (scripts/docker-engine.sh up installs it)"
  mirror="$(debian_mirror)"
  security="$(security_mirror "$mirror")"
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/predictflow-rootfs.XXXXXX")"
  # mktemp makes it 0700, and it becomes the image's /: non-root users
  # (redis, kafka, bentoml) could not reach a single file.
  chmod 0755 "$rootfs"
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs' '$rootfs.log'" RETURN
  log "debootstrap --variant=minbase $SUITE from $mirror"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed"; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
  install -m 0644 "$IMAGES/debian/apt-minimal.conf" "$rootfs/etc/apt/apt.conf.d/99predictflow"
  install -m 0644 "$IMAGES/debian/dpkg-nodoc.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/99predictflow-nodoc"
  # What the dpkg rule above keeps out of later installs, out of the base too.
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change "LABEL predictflow.inputs=$hash" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$image" >/dev/null
}

build_from_dockerfile() {
  local name="$1" image="$2" hash="$3" context
  context="$(mktemp -d "${TMPDIR:-/tmp}/predictflow-$name-ctx.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$context'" RETURN
  cp -r "$IMAGES/$name"/. "$context/"
  case "$name" in
    python)
      mkdir -p "$context/extra-ca"
      find "$EXTRA_CA_DIR" -type f -name '*.crt' -exec cp {} "$context/extra-ca/" \; 2>/dev/null || true
      ;;
    kafka)
      local libs
      libs="$("$REPO_ROOT/scripts/kafka.sh" libs | tail -n 1)"
      mkdir "$context/libs"
      cp "$libs"/*.jar "$context/libs/"
      ;;
  esac
  "$BUILD_DOCKER" build --network host --quiet \
    --build-arg "BASE=${NAME_OF[debian]}" \
    --label "predictflow.inputs=$hash" \
    -t "$image" "$context" >/dev/null
}

# build_one NAME FORCE
build_one() {
  local name="$1" force="$2" image hash t0
  image="${NAME_OF[$name]}"
  hash="$(inputs_hash "$name")"
  if [ "$force" = 0 ] && [ "$(label_of "$image")" = "$hash" ]; then
    log "$image is up to date ($hash)"
    return 0
  fi
  if [ "$name" != debian ]; then
    build_one debian 0
  fi
  t0=$(date +%s)
  log "building $image ($hash)"
  if [ "$name" = debian ]; then
    build_debian "$image" "$hash"
  else
    build_from_dockerfile "$name" "$image" "$hash"
  fi
  log "built $image in $(( $(date +%s) - t0 ))s, $(size_of "$image")"
}

# ---- the service image -------------------------------------------------------

# Whether to build on the local Python base (see IMAGE_BASE above).
service_base() {
  local base="${IMAGE_BASE:-auto}"
  case "$base" in
    local|upstream) echo "$base" ;;
    auto)
      if "$REPO_ROOT/scripts/docker-engine.sh" status 2>/dev/null | grep -q '^our dockerd'; then
        echo local
      else
        echo upstream
      fi
      ;;
    *) die "IMAGE_BASE must be local, upstream or auto (got '$base')" ;;
  esac
}

# service_inputs BENTOFILE BASE_ID: hash of what the service image is made
# from: the bentofile, the files it packs, the model it resolves, the base.
service_inputs() {
  "$(dirname "$BENTOML")/python" - "$1" "$2" "$REPO_ROOT" <<'PY'
import hashlib, os, sys
from pathlib import Path

import yaml

bentofile, base_id, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
config = yaml.safe_load(Path(bentofile).read_text())
digest = hashlib.sha256(Path(bentofile).read_bytes() + base_id.encode())


def content(path: Path) -> bytes:
    """What a file holds, for the files whose bytes change on every bootstrap."""
    if path.name == "registry.db":
        # Feast's registry: the definitions (feature_definitions.py, hashed
        # too) plus when they were applied and materialized, which changes
        # on every bootstrap and changes nothing the image serves.
        return b""
    if path.suffix == ".db":
        # The SQLite online store: its rows, whatever pages SQLite wrote.
        import sqlite3

        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = hashlib.sha256()
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in sorted(tables.fetchall()):
                rows.update(table.encode())
                for row in db.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2'):
                    rows.update(repr(row).encode())
            return rows.digest()
        finally:
            db.close()
    return path.read_bytes()


files = sorted({p for pattern in config["include"] for p in root.glob(pattern) if p.is_file()})
files.append(root / config["docker"]["dockerfile_template"])
for path in files:
    digest.update(str(path.relative_to(root)).encode() + b"\0" + content(path))

import bentoml  # after the files: it is slow to import

tag = os.environ.get("PREDICTFLOW_SERVING__MODEL_TAG", "churn-predictor:latest")
model = bentoml.models.get(tag)
digest.update(str(model.tag).encode())
for path in sorted(Path(model.path).rglob("*")):
    if path.is_file():
        digest.update(str(path.relative_to(model.path)).encode() + b"\0" + path.read_bytes())
print(digest.hexdigest()[:16])
PY
}

cmd_service() {
  local base bentofile base_id hash existing tag version t0 shim bentoml
  t0=$(date +%s)
  [ -x "$BENTOML" ] || die "no bentoml at $BENTOML (make install, or set BENTOML)"
  for f in registry.db online_store.db; do
    [ -f "$REPO_ROOT/feature_repo/data/$f" ] \
      || die "feature_repo/data/$f is missing: run predictflow bootstrap (make image does)"
  done
  base="$(service_base)"
  bentofile="$REPO_ROOT/bentofile.yaml"
  if [ "$base" = local ]; then
    build_one python 0
    base_id="$(docker image inspect --format '{{.Id}}' "${NAME_OF[python]}")"
    # The same bentofile, on the local base. BENTOML_HOST: on a machine whose
    # containers share the host's network, the service listens on loopback
    # only (-e BENTOML_HOST=0.0.0.0 where the container has its own network).
    mkdir -p "$REPO_ROOT/var/image"
    bentofile="$REPO_ROOT/var/image/bentofile.local.yaml"
    "$(dirname "$BENTOML")/python" - "$REPO_ROOT/bentofile.yaml" "$bentofile" "${NAME_OF[python]}" <<'PY'
import sys

import yaml

source, target, base_image = sys.argv[1:]
config = yaml.safe_load(open(source))
# base_image replaces python_version; the template (the command) stays.
config["docker"] = {
    "base_image": base_image,
    "dockerfile_template": config["docker"]["dockerfile_template"],
}
config["envs"] = [*config.get("envs", []), {"name": "BENTOML_HOST", "value": "127.0.0.1"}]
with open(target, "w") as out:
    out.write(f"# Written by scripts/images.sh from {source}; edits are overwritten.\n")
    yaml.safe_dump(config, out, sort_keys=False)
PY
  else
    base_id=upstream
  fi
  log "service image on the $base base ($bentofile)"
  hash="$(service_inputs "$bentofile" "$base_id")"
  existing="$(docker image ls --filter "label=predictflow.inputs=$hash" --format '{{.Repository}}:{{.Tag}}' \
    | grep "^$SERVICE_IMAGE:" | grep -v ':latest$' | head -n 1 || true)"
  if [ -n "$existing" ]; then
    docker tag "$existing" "$SERVICE_IMAGE:latest"
    log "$existing is up to date ($hash); tagged $SERVICE_IMAGE:latest in $(( $(date +%s) - t0 ))s"
    echo "$existing"
    return 0
  fi
  tag="$(cd "$REPO_ROOT" && "$BENTOML" build -f "$bentofile" --output tag . | sed -n 's/^__tag__://p' | tail -n 1)"
  [ -n "$tag" ] || die "bentoml build printed no tag"
  version="${tag#*:}"
  log "built bento $tag; containerizing (BuildKit=$BUILDKIT)"
  # bentoml runs `docker` from PATH: put the client picked above first.
  bentoml="$(readlink -f "$BENTOML")"
  shim="$(mktemp -d "${TMPDIR:-/tmp}/predictflow-docker-shim.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$shim'" RETURN
  ln -s "$BUILD_DOCKER" "$shim/docker"
  # From /: BentoML >= 1.4.36 refuses a dockerfile_template outside the
  # working directory, and containerize reads it from a temporary copy of
  # the bento (bentoml/BentoML#5566); everything below is absolute.
  (cd / && PATH="$shim:$PATH" "$bentoml" containerize "$tag" \
    --opt network=host \
    --opt "label=predictflow.inputs=$hash" \
    --opt "label=predictflow.bento=$tag" \
    -t "$SERVICE_IMAGE:$version" -t "$SERVICE_IMAGE:latest" >&2)
  # Older service images of ours: on vfs each is a full copy (gigabytes).
  if [ "$base" = local ]; then
    docker image ls --filter label=predictflow.bento --format '{{.Repository}}:{{.Tag}} {{.ID}}' \
      | awk -v keep="$(docker image inspect --format '{{.Id}}' "$SERVICE_IMAGE:$version")" \
          '$1 ~ /^'"$SERVICE_IMAGE"':/ && index(keep, $2) == 0 { print $1 }' \
      | xargs -r docker image rm >/dev/null || true
  fi
  docker image prune --force --filter label=predictflow.inputs >/dev/null
  log "built $SERVICE_IMAGE:$version and :latest in $(( $(date +%s) - t0 ))s, $(size_of "$SERVICE_IMAGE:$version")"
  echo "$SERVICE_IMAGE:$version"
}

# ---- main --------------------------------------------------------------------

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers (scripts/docker-engine.sh up, then eval \"\$(scripts/docker-engine.sh env)\")"
pick_builder

cmd="${1:-build}"
[ $# -gt 0 ] && shift
case "$cmd" in
  build|rebuild)
    force=0
    [ "$cmd" = rebuild ] && force=1
    names=("$@")
    [ ${#names[@]} -gt 0 ] || names=("${ORDER[@]}")
    for n in "${names[@]}"; do
      [ -n "${NAME_OF[$n]:-}" ] || die "no image named $n (one of: ${ORDER[*]})"
      build_one "$n" "$force"
    done
    # Layers of replaced images: vfs keeps a whole copy of each.
    docker image prune --force --filter label=predictflow.inputs >/dev/null
    ;;
  service) cmd_service ;;
  names)
    for n in "${ORDER[@]}"; do echo "$n=${NAME_OF[$n]}"; done
    ;;
  *)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
