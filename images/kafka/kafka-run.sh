#!/bin/bash
# The Kafka image's entrypoint: write the config (the same settings as
# scripts/kafka.sh), format the storage once, run the broker in the foreground
# with its log on stderr.
set -euo pipefail
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
DATA="${KAFKA_DATA_DIR:-/var/lib/kafka}"
HOST=127.0.0.1
mkdir -p "$DATA/data"
cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/data
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
PROPS
cat >"$DATA/log4j2.properties" <<'LOG'
status = error
appender.main.type = Console
appender.main.name = MAIN
appender.main.target = SYSTEM_ERR
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.main.ref = MAIN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
LOG
LOG4J="-Dlog4j2.configurationFile=$DATA/log4j2.properties"
if [ ! -f "$DATA/data/meta.properties" ]; then
  # A cluster id of Kafka's shape: 16 random bytes, URL-safe base64, unpadded.
  cid="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
  case "$cid" in -*) cid="A${cid:1}" ;; esac
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$LOG4J" \
    -cp '/opt/kafka/libs/*' kafka.tools.StorageTool format -t "$cid" \
    -c "$DATA/server.properties" --ignore-formatted >&2
fi
read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
read -r -a extra <<<"${KAFKA_JVM_OPTS:-}"
exec java "${heap[@]}" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExitOnOutOfMemoryError \
  -Djava.awt.headless=true "$LOG4J" "${extra[@]}" \
  -cp '/opt/kafka/libs/*' kafka.Kafka "$DATA/server.properties"
