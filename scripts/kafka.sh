#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft mode, combined
# broker+controller) on 127.0.0.1, for development and integration tests.
#
# The broker's jars come from Maven Central through Maven: scripts/kafka/pom.xml
# names them and pins the Kafka version (property kafka.version, the one place
# it is set). They are copied once into
#   ${PREDICTFLOW_CACHE_DIR:-<repo>/.cache}/kafka/<version>/libs
# and reused afterwards (Maven's own repository, ~/.m2, is used as usual).
#
# Usage: scripts/kafka.sh COMMAND [ARGS...]
#   up                 resolve the jars if needed, format the storage if needed,
#                      start the broker in the background and wait until it
#                      answers a Metadata request; prints the seconds it took.
#                      Does nothing (exit 0) when it is already running.
#   down               stop it (SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT
#                      seconds); exit 0 when it is not running.
#   status             exit 0 when it is running and answering, 1 otherwise.
#   bootstrap          print the bootstrap address (127.0.0.1:PORT).
#   topics ARGS...     Kafka's TopicCommand  (e.g. topics --create --topic t
#                      --partitions 1); --bootstrap-server is added for you,
#                      and in secure mode --command-config with the admin's
#                      credentials (pass your own --command-config to be
#                      someone else).
#   console-producer ARGS...  Kafka's ConsoleProducer (e.g. --topic t).
#   console-consumer ARGS...  Kafka's ConsoleConsumer (e.g. --topic t
#                      --from-beginning --max-messages 1).
#   acls ARGS...       Kafka's AclCommand (secure mode; e.g. acls --list).
#   clients            print the directory of the client credential files.
#   logs               print the end of the broker's log.
#   clean              stop it and delete its storage, config and logs.
#   libs               resolve the jars only; print the libs directory.
#
# Environment (all optional):
#   KAFKA_PORT             client listener port            (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller listener port  (default 9093)
#   KAFKA_DATA_DIR         storage, config, log, pid file  (default <repo>/var/kafka)
#   KAFKA_START_TIMEOUT    seconds `up` waits for the broker (default 90)
#   KAFKA_STOP_TIMEOUT     seconds `down` waits before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        broker heap (default -Xms256m -Xmx512m)
#   KAFKA_JVM_PERFORMANCE_OPTS  GC/JIT options (default: G1 as Kafka's own
#                          scripts set it)
#   KAFKA_SECURITY         plaintext (default) or sasl_ssl, see below; a data
#                          dir formatted in one mode refuses the other (clean)
#   KAFKA_JVM_OPTS         extra JVM options for the broker (e.g.
#                          -XX:TieredStopAtLevel=1 starts ~1.5 s faster on
#                          2 cores, at some cost in throughput)
#   KAFKA_VERSION          overrides the pom's kafka.version (must be served)
#   PREDICTFLOW_CACHE_DIR  where the jars are cached (default <repo>/.cache)
#   JAVA_HOME              the Java (17 or newer) to use; else `java` on PATH
#
# Needs java (17+), mvn (only to resolve the jars the first time) and python3
# (for the readiness probe). When java or mvn is missing and this runs as root
# on a machine with apt-get (CI), it installs Debian's default-jre-headless and
# maven; otherwise it stops with a message saying what to install.
#
# Several brokers can run at once, each with its own KAFKA_PORT,
# KAFKA_CONTROLLER_PORT and KAFKA_DATA_DIR.
#
# KAFKA_SECURITY=sasl_ssl: the only client listener on KAFKA_PORT is SASL_SSL
# (SCRAM-SHA-512 over TLS), and the broker authorizes every request
# (StandardAuthorizer, ACLs). The first `up` generates, under KAFKA_DATA_DIR
# (files readable by you only):
#   tls/                a CA and the broker's certificate (openssl), for
#                       127.0.0.1 and localhost; clients trust tls/ca.pem
#   clients/USER.properties       librdkafka names (kcat -F, confluent-kafka)
#   clients/USER.java.properties  Kafka's Java clients and tools (--command-config)
#   clients/USER.env              PREDICTFLOW_KAFKA__* (`set -a; . USER.env`)
# for the users admin (super user), predictflow (the service) and requester,
# each with a random password, and creates the contract's topics and ACLs:
#   predictflow  reads churn-requests in group predictflow-churn; writes
#                churn-responses and churn-requests.dlq; transactional ids
#                prefixed predictflow-churn; describes every topic (so a
#                reply_to it may not write to is dead-lettered as forbidden,
#                not missing). Other reply topics: grant WRITE per topic
#                (see `acls`); Kafka ACLs match names literally or by prefix,
#                never by the runner's suffix pattern.
#   requester    writes churn-requests; reads churn-responses, in any group
#                prefixed requester-
#   nobody but admin reads churn-requests.dlq; nobody but admin creates topics.
# The KRaft controller listener (KAFKA_CONTROLLER_PORT, 127.0.0.1) is TLS with
# client certificates: only a holder of the broker's key gets in.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$REPO_ROOT/scripts/kafka/pom.xml"

pom_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n 1)"
KAFKA_VERSION="${KAFKA_VERSION:-$pom_version}"
if [ -z "$KAFKA_VERSION" ]; then
  echo "kafka.sh: no <kafka.version> in $POM" >&2
  exit 1
fi

HOST=127.0.0.1
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
DATA_DIR="${KAFKA_DATA_DIR:-$REPO_ROOT/var/kafka}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
PERF_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
CACHE_ROOT="${PREDICTFLOW_CACHE_DIR:-$REPO_ROOT/.cache}"
VERSION_DIR="$CACHE_ROOT/kafka/$KAFKA_VERSION"
LIBS="$VERSION_DIR/libs"

case "$DATA_DIR" in /*) ;; *) DATA_DIR="$PWD/$DATA_DIR" ;; esac
LOG_DIRS="$DATA_DIR/data"
PROPS="$DATA_DIR/server.properties"
LOG4J="$DATA_DIR/log4j2.properties"
TOOLS_LOG4J="$DATA_DIR/tools-log4j2.properties"
SERVER_LOG="$DATA_DIR/server.log"
OUT_LOG="$DATA_DIR/kafka.out"
PID_FILE="$DATA_DIR/kafka.pid"
# Secure mode (KAFKA_SECURITY=sasl_ssl) only.
TLS_DIR="$DATA_DIR/tls"
SECRETS_DIR="$DATA_DIR/secrets"
CLIENTS_DIR="$DATA_DIR/clients"
MODE_FILE="$DATA_DIR/security"
SETUP_MARK="$DATA_DIR/secure-setup.done"
SETUP_OUT="$DATA_DIR/secure-setup.out"
PROBE_SASL="$REPO_ROOT/scripts/kafka/probe_sasl.py"
USERS=(admin predictflow requester)
# The broker's certificate subject: its principal on the controller listener.
BROKER_DN="CN=predictflow-kafka-broker"
# Bump when the topics or ACLs below change: the next `up` applies them.
SETUP_VERSION=1
# The contract's topics: the defaults of KafkaSettings (predictflow/settings.py).
REQUEST_TOPIC=churn-requests
REPLY_TOPIC=churn-responses
DLQ_TOPIC=churn-requests.dlq
GROUP=predictflow-churn
TRANSACTIONAL_ID=predictflow-churn
REQUEST_PARTITIONS=6

# The mode: KAFKA_SECURITY, else the one the data dir was formatted in.
SECURITY="${KAFKA_SECURITY:-}"
if [ -z "$SECURITY" ] && [ -f "$MODE_FILE" ]; then
  SECURITY="$(cat "$MODE_FILE")"
fi
SECURITY="$(printf '%s' "${SECURITY:-plaintext}" | tr '[:upper:]' '[:lower:]')"
case "$SECURITY" in
  plaintext) ;;
  sasl_ssl) umask 077 ;;  # keys, passwords and their copies: yours only
  *) echo "kafka.sh: KAFKA_SECURITY must be plaintext or sasl_ssl, not '$SECURITY'" >&2; exit 2 ;;
esac

for p in "$PORT" "$CONTROLLER_PORT"; do
  case "$p" in
    ''|*[!0-9]*) echo "kafka.sh: bad port '$p'" >&2; exit 2 ;;
  esac
done
if [ "$PORT" = "$CONTROLLER_PORT" ]; then
  echo "kafka.sh: KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ" >&2
  exit 2
fi

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

JAVA="java"
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
  JAVA="$JAVA_HOME/bin/java"
fi

# ---- prerequisites ---------------------------------------------------------

apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "$@" >/dev/null
  else
    die "needs $* (install them: e.g. apt-get install $*)"
  fi
}

need_python() {
  command -v python3 >/dev/null 2>&1 || die "needs python3 (for the readiness probe)"
}

need_java() {
  if ! command -v "$JAVA" >/dev/null 2>&1; then
    apt_install default-jre-headless
    JAVA=java
  fi
  local major
  major="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    die "Kafka $KAFKA_VERSION needs Java 17 or newer; $JAVA is version '${major:-unknown}' (set JAVA_HOME)"
  fi
}

need_openssl() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl
}

need_mvn() {
  command -v mvn >/dev/null 2>&1 || apt_install maven
}

# Copies the broker's jars into $LIBS once; a .complete marker says it is done.
ensure_libs() {
  [ -f "$LIBS/.complete" ] && return 0
  need_java
  need_mvn
  mkdir -p "$VERSION_DIR"
  (
    if command -v flock >/dev/null 2>&1; then
      flock 9
    fi
    [ -f "$LIBS/.complete" ] && exit 0
    log "resolving Kafka $KAFKA_VERSION jars with Maven into $LIBS"
    local t0 tmp
    t0=$(date +%s)
    tmp="$VERSION_DIR/libs.tmp.$$"
    rm -rf "$tmp"
    # Maven -q still prints stray colour codes: keep its output for failures only.
    if ! mvn -q -B -Dstyle.color=never -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp" >"$VERSION_DIR/mvn.log" 2>&1; then
      cat "$VERSION_DIR/mvn.log" >&2
      rm -rf "$tmp"
      die "mvn could not resolve Kafka $KAFKA_VERSION (is Maven Central reachable?)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "no kafka_2.13 jar resolved"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    touch "$LIBS/.complete"
    log "resolved $(find "$LIBS" -name '*.jar' | wc -l) jars in $(( $(date +%s) - t0 ))s"
  ) 9>"$VERSION_DIR/.lock"
}

# ---- config ----------------------------------------------------------------

write_config() {
  mkdir -p "$DATA_DIR" "$LOG_DIRS"
  if [ "$SECURITY" = sasl_ssl ]; then
    write_secure_listeners
  else
    cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh on every 'up'; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
  fi
  cat >>"$PROPS" <<EOF
log.dirs=$LOG_DIRS
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  write_log4j "$LOG4J" INFO "File" "$SERVER_LOG"
}

# The listeners of secure mode. Clients: SASL_SSL only. The broker talks to
# itself (transaction markers) on that listener too, as admin. The controller
# listener is TLS with client certificates: the broker's key is the way in,
# not the loopback address (a PLAINTEXT controller listener would make every
# local process the ANONYMOUS super user the authorizer needs there).
write_secure_listeners() {
  local admin_pw store_pw
  admin_pw="$(cat "$SECRETS_DIR/admin.password")"
  store_pw="$(cat "$SECRETS_DIR/store.password")"
  cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh on every 'up'; edits are overwritten.
# KAFKA_SECURITY=sasl_ssl: holds the admin and keystore passwords (mode 600).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=SASL_SSL://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:SSL,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_pw";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/broker.p12
ssl.keystore.password=$store_pw
ssl.key.password=$store_pw
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
listener.name.controller.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:$BROKER_DN
allow.everyone.if.no.acl.found=false
EOF
}

# write_log4j FILE LEVEL File|Console [LOGFILE]
write_log4j() {
  local file="$1" level="$2" kind="$3" target="${4:-}"
  {
    echo "status = error"
    if [ "$kind" = File ]; then
      echo "appender.main.type = RollingFile"
      echo "appender.main.fileName = $target"
      echo "appender.main.filePattern = $target.%i"
      echo "appender.main.policies.type = Policies"
      echo "appender.main.policies.size.type = SizeBasedTriggeringPolicy"
      echo "appender.main.policies.size.size = 20MB"
      echo "appender.main.strategy.type = DefaultRolloverStrategy"
      echo "appender.main.strategy.max = 2"
    else
      echo "appender.main.type = Console"
      echo "appender.main.target = SYSTEM_ERR"
    fi
    echo "appender.main.name = MAIN"
    echo "appender.main.layout.type = PatternLayout"
    echo "appender.main.layout.pattern = [%d] %p %m (%c)%n"
    echo "rootLogger.level = $level"
    echo "rootLogger.appenderRef.main.ref = MAIN"
    # The state-change and request loggers are chatty at INFO.
    echo "logger.statechange.name = state.change.logger"
    echo "logger.statechange.level = WARN"
    echo "logger.request.name = kafka.request.logger"
    echo "logger.request.level = WARN"
  } >"$file"
}

# ---- secure mode -----------------------------------------------------------

random_secret() {
  # 192 random bits, hex: safe inside JAAS quotes, SCRAM specs and .env files.
  python3 -c 'import secrets; print(secrets.token_hex(24))'
}

# A data dir formatted in one mode is never started in the other: the users
# and ACLs of secure mode live in its metadata.
check_mode() {
  [ -f "$LOG_DIRS/meta.properties" ] || return 0
  local formatted=plaintext
  if [ -f "$MODE_FILE" ]; then formatted="$(cat "$MODE_FILE")"; fi
  if [ "$formatted" != "$SECURITY" ]; then
    die "$DATA_DIR was formatted with KAFKA_SECURITY=$formatted, not $SECURITY: use that, or 'scripts/kafka.sh clean' first (deletes its data)"
  fi
}

# A CA and the broker's certificate (127.0.0.1 and localhost; serverAuth for
# clients, clientAuth for the controller listener), once.
ensure_tls() {
  [ -f "$TLS_DIR/broker.p12" ] && [ -f "$TLS_DIR/ca.pem" ] && return 0
  need_openssl
  mkdir -p "$TLS_DIR" "$SECRETS_DIR"
  [ -f "$SECRETS_DIR/store.password" ] || random_secret >"$SECRETS_DIR/store.password"
  log "generating a CA and the broker's certificate in $TLS_DIR"
  local ext="$TLS_DIR/broker.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=serverAuth,clientAuth"
    echo "subjectAltName=IP:$HOST,DNS:localhost"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid,issuer"
  } >"$ext"
  (
    cd "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout ca.key -out ca.pem -days 3650 -subj "/CN=PredictFlow local Kafka CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -keyout broker.key -out broker.csr -subj "/$BROKER_DN"
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(random_secret)" \
      -days 825 -extfile "$ext" -out broker.pem
    KAFKA_STORE_PASSWORD="$(cat "$SECRETS_DIR/store.password")" \
      openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem \
      -name broker -out broker.p12.tmp -passout env:KAFKA_STORE_PASSWORD
    mv broker.p12.tmp broker.p12
    rm -f broker.csr broker.ext
  ) >"$TLS_DIR/openssl.out" 2>&1 || { cat "$TLS_DIR/openssl.out" >&2; die "openssl failed"; }
}

# Each user's random password, made once; the storage holds its SCRAM form.
ensure_passwords() {
  mkdir -p "$SECRETS_DIR"
  local u
  for u in "${USERS[@]}"; do
    [ -s "$SECRETS_DIR/$u.password" ] && continue
    if [ -f "$LOG_DIRS/meta.properties" ]; then
      die "$SECRETS_DIR/$u.password is gone but the storage was formatted with it: 'scripts/kafka.sh clean' to start over"
    fi
    random_secret >"$SECRETS_DIR/$u.password"
  done
}

# q VALUE: VALUE quoted for a shell `.` (as is when it needs no quoting).
q() { printf '%q' "$1"; }

# The client files of each user, rewritten on every `up` (the port may change).
write_client_files() {
  mkdir -p "$CLIENTS_DIR"
  local u pw ca="$TLS_DIR/ca.pem"
  for u in "${USERS[@]}"; do
    pw="$(cat "$SECRETS_DIR/$u.password")"
    cat >"$CLIENTS_DIR/$u.properties" <<EOF
# $u on the local secure broker: librdkafka names (kcat -F FILE, confluent-kafka).
# Written by scripts/kafka.sh on every 'up'.
bootstrap.servers=$HOST:$PORT
security.protocol=SASL_SSL
sasl.mechanisms=SCRAM-SHA-512
sasl.username=$u
sasl.password=$pw
ssl.ca.location=$ca
EOF
    cat >"$CLIENTS_DIR/$u.java.properties" <<EOF
# $u on the local secure broker: Kafka's Java clients and tools (--command-config).
# Written by scripts/kafka.sh on every 'up'.
bootstrap.servers=$HOST:$PORT
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$u" password="$pw";
ssl.truststore.type=PEM
ssl.truststore.location=$ca
EOF
    # Topics are created by admin here (below), so no client asks to.
    cat >"$CLIENTS_DIR/$u.env" <<EOF
# $u on the local secure broker: \`set -a; . $CLIENTS_DIR/$u.env; set +a\`
# Written by scripts/kafka.sh on every 'up'.
PREDICTFLOW_KAFKA__BOOTSTRAP_SERVERS=$(q "$HOST:$PORT")
PREDICTFLOW_KAFKA__SECURITY_PROTOCOL=SASL_SSL
PREDICTFLOW_KAFKA__SASL_MECHANISM=SCRAM-SHA-512
PREDICTFLOW_KAFKA__SASL_USERNAME=$(q "$u")
PREDICTFLOW_KAFKA__SASL_PASSWORD=$(q "$pw")
PREDICTFLOW_KAFKA__SSL_CAFILE=$(q "$ca")
PREDICTFLOW_KAFKA__CREATE_TOPICS=false
EOF
  done
}

# The users for `kafka-storage format --add-scram`: in KRaft the only way to
# have them before the first start (admin is the broker's own login). The
# passwords are on that tool's command line for the seconds it runs, visible
# to local users (ps); after that they live in files only you can read.
scram_args() {
  local u
  for u in "${USERS[@]}"; do
    printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$u,password=$(cat "$SECRETS_DIR/$u.password")]"
  done
}

# admin_tool MAIN ARGS...: start a Kafka tool as admin, in the background
# (a tool is mostly JVM start-up and waiting on the broker);
# at most SETUP_PARALLEL run at once. admin_tools_wait waits for them all.
SETUP_PARALLEL=2
SETUP_JOBS=()
SETUP_N=0
admin_tool() {
  local main="$1"; shift
  if [ "${#SETUP_JOBS[@]}" -ge "$SETUP_PARALLEL" ]; then
    admin_tool_wait "${SETUP_JOBS[0]}"
    SETUP_JOBS=("${SETUP_JOBS[@]:1}")
  fi
  SETUP_N=$(( SETUP_N + 1 ))
  local out="$SETUP_OUT.$SETUP_N"
  echo "$main $*" >"$out"
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$LIBS/*" "$main" --bootstrap-server "$HOST:$PORT" \
    --command-config "$CLIENTS_DIR/admin.java.properties" "$@" >>"$out" 2>&1 &
  SETUP_JOBS+=("$!:$out")
}

# admin_tool_wait PID:OUTFILE
admin_tool_wait() {
  local pid="${1%%:*}" out="${1#*:}" rc=0
  wait "$pid" || rc=$?
  cat "$out" >>"$SETUP_OUT"
  rm -f "$out"
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$SETUP_OUT" >&2
    die "a Kafka tool failed (exit $rc; see $SETUP_OUT)"
  fi
}

admin_tools_wait() {
  local job
  for job in "${SETUP_JOBS[@]}"; do admin_tool_wait "$job"; done
  SETUP_JOBS=()
}

# acl PRINCIPAL PATTERN_TYPE OPERATIONS RESOURCES...: allow every operation
# (comma-separated) on every resource (--topic T, --group G, ...).
acl() {
  local principal="$1" pattern="$2" ops="$3"; shift 3
  local -a args=(--add --allow-principal "User:$principal" --resource-pattern-type "$pattern")
  local op
  for op in ${ops//,/ }; do args+=(--operation "$op"); done
  admin_tool org.apache.kafka.tools.AclCommand "${args[@]}" "$@"
}

# The contract's topics and who may do what on them; once per SETUP_VERSION.
secure_setup() {
  if [ "$(cat "$SETUP_MARK" 2>/dev/null || true)" = "$SETUP_VERSION" ]; then
    return 0
  fi
  local t0
  t0=$(date +%s)
  : >"$SETUP_OUT"
  local topic parts
  for topic in "$REQUEST_TOPIC:$REQUEST_PARTITIONS" "$REPLY_TOPIC:$REQUEST_PARTITIONS" "$DLQ_TOPIC:1"; do
    parts="${topic##*:}"
    admin_tool org.apache.kafka.tools.TopicCommand --create --if-not-exists \
      --topic "${topic%:*}" --partitions "$parts" --replication-factor 1
  done
  # The service: consume requests (and commit, also inside transactions) ...
  acl predictflow literal Read,Describe --topic "$REQUEST_TOPIC" --group "$GROUP"
  # ... write replies and dead letters (never read them) ...
  acl predictflow literal Write,Describe --topic "$REPLY_TOPIC" --topic "$DLQ_TOPIC"
  # ... under its transactional ids (exactly-once: predictflow-churn-<instance>) ...
  acl predictflow prefixed Write,Describe --transactional-id "$TRANSACTIONAL_ID"
  # ... and see every topic: a reply_to naming a topic it may not write to is
  # then refused by the broker and dead-lettered as reply_topic_forbidden
  # (without it, the topic looks missing: reply_topic_missing).
  acl predictflow literal Describe --topic '*'
  # Requesters: publish requests, read replies in their own groups.
  acl requester literal Write,Describe --topic "$REQUEST_TOPIC"
  acl requester literal Read,Describe --topic "$REPLY_TOPIC"
  acl requester prefixed Read --group requester-
  admin_tools_wait
  echo "$SETUP_VERSION" >"$SETUP_MARK"
  log "created the topics and ACLs in $(( $(date +%s) - t0 ))s"
}

# ---- process helpers -------------------------------------------------------

# Prints the broker's pid when the pid file names a live broker of this data dir.
running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: the process must be our broker.
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$PROPS" || return 1
  fi
  echo "$pid"
}

# probe PORT TIMEOUT: exit 0 when a Kafka broker there answers a Metadata
# request (v4, all topics) listing at least one broker (in secure mode, over
# TLS after admin's SCRAM login: scripts/kafka/probe_sasl.py).
probe() {
  if [ "$SECURITY" = sasl_ssl ]; then
    KAFKA_PROBE_PASSWORD="$(cat "$SECRETS_DIR/admin.password")" \
      python3 "$PROBE_SASL" "$HOST" "$1" "$2" "$TLS_DIR/ca.pem" admin
    return
  fi
  python3 - "$HOST" "$1" "$2" <<'PY'
import socket, struct, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client = b"kafka.sh"
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
# body v4: topics=null (all), allow_auto_topic_creation=false
req = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">i", len(req)) + req)
        def recv(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf
        (size,) = struct.unpack(">i", recv(4))
        resp = recv(size)
    corr, _throttle, nbrokers = struct.unpack_from(">iii", resp, 0)
except (OSError, EOFError, struct.error):
    sys.exit(1)
sys.exit(0 if corr == 7 and nbrokers >= 1 else 1)
PY
}

# port_busy PORT: exit 0 when something accepts TCP connections there.
port_busy() {
  python3 - "$HOST" "$1" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

new_cluster_id() {
  # Same shape as Kafka's Uuid.randomUuid(): URL-safe base64 of 16 random
  # bytes, unpadded, not starting with '-'.
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break
'
}

tool_java() {
  # Short-lived tools: small heap, fast start.
  local main="$1"; shift
  exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$LIBS/*" "$main" "$@"
}

has_arg() {
  local want="$1"; shift
  local a
  for a in "$@"; do
    case "$a" in "$want"|"$want"=*) return 0 ;; esac
  done
  return 1
}

tail_logs() {
  local f
  for f in "$OUT_LOG" "$SERVER_LOG"; do
    if [ -s "$f" ]; then
      echo "---- last lines of $f" >&2
      tail -n 30 "$f" >&2
    fi
  done
}

# ---- commands --------------------------------------------------------------

wait_ready() {
  local pid="$1" t0="$2" now rc
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      tail_logs
      die "the broker exited while starting (logs in $DATA_DIR)"
    fi
    rc=0
    probe "$PORT" 2 || rc=$?
    if [ "$rc" -eq 0 ]; then
      return 0
    fi
    now=$(date +%s)
    if [ $(( now - t0 )) -ge "$START_TIMEOUT" ]; then
      tail_logs
      if [ "$rc" -eq 3 ]; then
        log "the broker refused admin's login (is $SECRETS_DIR/admin.password the one the storage was formatted with?)"
      fi
      log "the broker did not answer on $HOST:$PORT within ${START_TIMEOUT}s; stopping it"
      cmd_down >/dev/null 2>&1 || true
      exit 1
    fi
    sleep 0.3
  done
}

cmd_up() {
  need_python
  check_mode
  local pid
  if pid="$(running_pid)"; then
    if probe "$PORT" 5; then
      if [ "$SECURITY" = sasl_ssl ]; then secure_setup; fi
      echo "Kafka $KAFKA_VERSION is already running on $HOST:$PORT (pid $pid, data $DATA_DIR)"
      return 0
    fi
    log "pid $pid is running but not answering yet; waiting for it"
    wait_ready "$pid" "$(date +%s)"
    if [ "$SECURITY" = sasl_ssl ]; then secure_setup; fi
    echo "Kafka $KAFKA_VERSION is running on $HOST:$PORT (pid $pid, data $DATA_DIR)"
    return 0
  fi
  rm -f "$PID_FILE"

  ensure_libs
  need_java

  local p
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_busy "$p"; then
      die "port $HOST:$p is already in use by another process (set KAFKA_PORT / KAFKA_CONTROLLER_PORT)"
    fi
  done

  if [ "$SECURITY" = sasl_ssl ]; then
    ensure_tls
    ensure_passwords
    write_client_files
  fi
  write_config
  write_log4j "$TOOLS_LOG4J" WARN Console

  if [ ! -f "$LOG_DIRS/meta.properties" ]; then
    local cid
    local -a scram=()
    cid="$(new_cluster_id)"
    log "formatting $LOG_DIRS (cluster id $cid)"
    # Secure mode: the SCRAM users go into the bootstrap metadata, so the
    # broker knows admin (its own inter-broker login) from its first start.
    if [ "$SECURITY" = sasl_ssl ]; then mapfile -t scram < <(scram_args); fi
    "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" \
      kafka.tools.StorageTool format -t "$cid" -c "$PROPS" --ignore-formatted "${scram[@]}" >"$DATA_DIR/format.out" 2>&1 \
      || { cat "$DATA_DIR/format.out" >&2; die "formatting the storage failed"; }
    if [ "$SECURITY" = sasl_ssl ]; then echo sasl_ssl >"$MODE_FILE"; fi
  fi

  local t0 start_ns
  t0=$(date +%s)
  start_ns=$(date +%s%N)
  # Keep the previous run's logs one generation back; the new ones start empty.
  local f
  for f in "$SERVER_LOG" "$OUT_LOG"; do
    if [ -f "$f" ]; then mv -f "$f" "$f.prev"; fi
  done
  : >"$OUT_LOG"
  local -a heap perf extra
  read -r -a heap <<<"$HEAP_OPTS"
  read -r -a perf <<<"$PERF_OPTS"
  read -r -a extra <<<"${KAFKA_JVM_OPTS:-}"
  local -a java_cmd=("$JAVA" "${heap[@]}" "${perf[@]}" -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dkafka.logs.dir="$DATA_DIR"
    -Dlog4j2.configurationFile="$LOG4J"
    "${extra[@]}"
    -cp "$LIBS/*" kafka.Kafka "$PROPS")
  # The subshell records its own pid, then execs java, so the pid is the broker's.
  # shellcheck disable=SC2016
  if command -v setsid >/dev/null 2>&1; then
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "${java_cmd[@]}" </dev/null >>"$OUT_LOG" 2>&1 &
  else
    nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "${java_cmd[@]}" </dev/null >>"$OUT_LOG" 2>&1 &
  fi
  local _
  for _ in $(seq 1 50); do
    [ -s "$PID_FILE" ] && break
    sleep 0.1
  done
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [ -n "$pid" ] || die "could not start java (see $OUT_LOG)"

  wait_ready "$pid" "$t0"
  if [ "$SECURITY" = sasl_ssl ]; then secure_setup; fi
  local ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  printf 'Kafka %s up on %s:%s (pid %s, data %s) in %d.%03ds\n' \
    "$KAFKA_VERSION" "$HOST" "$PORT" "$pid" "$DATA_DIR" $(( ms / 1000 )) $(( ms % 1000 ))
  if [ "$SECURITY" = sasl_ssl ]; then
    echo "SASL_SSL only; credentials of ${USERS[*]} in $CLIENTS_DIR (USER.env, USER.properties, USER.java.properties)"
  fi
}

cmd_down() {
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    echo "Kafka is not running (data $DATA_DIR)"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$(( $(date +%s) + STOP_TIMEOUT ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "pid $pid did not stop within ${STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  echo "Kafka stopped (pid $pid)"
}

cmd_status() {
  need_python
  local pid
  if ! pid="$(running_pid)"; then
    echo "Kafka is not running (data $DATA_DIR)"
    return 1
  fi
  if probe "$PORT" 5; then
    echo "Kafka $KAFKA_VERSION is running on $HOST:$PORT (pid $pid, data $DATA_DIR)"
    return 0
  fi
  echo "Kafka pid $pid is alive but not answering on $HOST:$PORT"
  return 1
}

cmd_clean() {
  cmd_down
  rm -rf "$LOG_DIRS"
  rm -f "$PROPS" "$LOG4J" "$TOOLS_LOG4J" "$OUT_LOG" "$OUT_LOG.prev" "$DATA_DIR/format.out" "$SERVER_LOG" "$SERVER_LOG".*
  rm -rf "$TLS_DIR" "$SECRETS_DIR" "$CLIENTS_DIR"
  rm -f "$MODE_FILE" "$SETUP_MARK" "$SETUP_OUT"
  rmdir "$DATA_DIR" 2>/dev/null || true
  echo "removed the broker's storage and logs in $DATA_DIR"
}

cmd_tool() {
  local main="$1"; shift
  ensure_libs
  need_java
  mkdir -p "$DATA_DIR"
  [ -f "$TOOLS_LOG4J" ] || write_log4j "$TOOLS_LOG4J" WARN Console
  # Secure mode: as admin, unless the caller says who to be.
  local -a as=()
  if [ "$SECURITY" = sasl_ssl ] && ! has_arg --command-config "$@" \
      && ! has_arg --producer.config "$@" && ! has_arg --consumer.config "$@"; then
    [ -f "$CLIENTS_DIR/admin.java.properties" ] \
      || die "no $CLIENTS_DIR/admin.java.properties: run 'KAFKA_SECURITY=sasl_ssl scripts/kafka.sh up' first"
    as=(--command-config "$CLIENTS_DIR/admin.java.properties")
  fi
  if has_arg --bootstrap-server "$@"; then
    tool_java "$main" "${as[@]}" "$@"
  else
    tool_java "$main" --bootstrap-server "$HOST:$PORT" "${as[@]}" "$@"
  fi
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  up) cmd_up ;;
  down|stop) cmd_down ;;
  status) cmd_status ;;
  bootstrap) echo "$HOST:$PORT" ;;
  topics) cmd_tool org.apache.kafka.tools.TopicCommand "$@" ;;
  console-producer) cmd_tool org.apache.kafka.tools.ConsoleProducer "$@" ;;
  console-consumer) cmd_tool org.apache.kafka.tools.consumer.ConsoleConsumer "$@" ;;
  acls) cmd_tool org.apache.kafka.tools.AclCommand "$@" ;;
  clients) echo "$CLIENTS_DIR" ;;
  logs) tail -n "${1:-50}" "$SERVER_LOG" ;;
  clean) cmd_clean ;;
  libs) ensure_libs; echo "$LIBS" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
