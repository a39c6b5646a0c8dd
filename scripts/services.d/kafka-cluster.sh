# shellcheck shell=bash
# Sourced by scripts/services: a multi-node KRaft Kafka cluster on loopback, used when
# RISKMON_KAFKA_BROKERS is 2 or more (the single-node path in scripts/services is unchanged).
#
# Every node runs broker and controller in one JVM (KRaft combined mode), so N nodes are also an
# N-voter controller quorum: one node lost leaves a broker majority and a controller majority.
#   node i (1..N): client listener   RISKMON_KAFKA_PORT + i - 1
#                  controller port   RISKMON_KAFKA_PORT + N + i - 1
#   state          $VAR/kafka-cluster/node-i/{server.properties,data,logs,kafka.pid}
# Each node's server.properties is scripts/kafka/server.properties.in rendered as for the single
# node, then overridden by kafka_cluster_node_overrides (node id, quorum, listeners, replication of
# the internal topics). All nodes are formatted with one cluster id ($VAR/kafka-cluster/cluster-id).
# Topics riskmon creates get their replication and min.insync.replicas from its settings
# (RISKMON_TOPICS__REPLICATION=3, RISKMON_TOPICS__MIN_INSYNC_REPLICAS=2); the broker default stays
# min.insync.replicas=1 so that tools' ad-hoc topics with replication 1 still take acks=all writes.
#
# Uses from scripts/services: HOST VAR KAFKA_SRC KAFKA_LIBS HEAP TIMEOUT PROBE and the helpers
# note die pid_ours stop_pid port_open kafka_java java_check kafka_fetch new_cluster_id (if defined).

KAFKA_BROKERS="${RISKMON_KAFKA_BROKERS:-1}"
KCLUSTER_VAR="$VAR/kafka-cluster"
# the cluster's JVMs share the machine with each other and the workers: a smaller heap each by default
KCLUSTER_HEAP="${RISKMON_KAFKA_NODE_HEAP:--Xms128m -Xmx384m}"

kafka_cluster_enabled() { [ "$KAFKA_BROKERS" -gt 1 ] 2>/dev/null; }

kafka_cluster_check_size() {
    case "$KAFKA_BROKERS" in
        ''|*[!0-9]*) die "RISKMON_KAFKA_BROKERS must be a whole number (1 = single node), got '$KAFKA_BROKERS'" ;;
    esac
    [ "$KAFKA_BROKERS" -le 9 ] || die "RISKMON_KAFKA_BROKERS=$KAFKA_BROKERS: at most 9 local nodes"
}

kafka_node_port() { echo $((KAFKA_PORT + $1 - 1)); }
kafka_node_controller_port() { echo $((KAFKA_PORT + KAFKA_BROKERS + $1 - 1)); }
kafka_node_dir() { echo "$KCLUSTER_VAR/node-$1"; }

kafka_cluster_bootstrap() {  # host:port,host:port,... of every node
    local i out=""
    for i in $(seq 1 "$KAFKA_BROKERS"); do out="$out${out:+,}$HOST:$(kafka_node_port "$i")"; done
    echo "$out"
}

kafka_cluster_voters() {
    local i out=""
    for i in $(seq 1 "$KAFKA_BROKERS"); do out="$out${out:+,}$i@$HOST:$(kafka_node_controller_port "$i")"; done
    echo "$out"
}

# kafka_cluster_node_overrides I: the lines appended to the rendered single-node template
# (java.util.Properties keeps the last value of a repeated key)
kafka_cluster_node_overrides() {
    local i="$1" port cport rf isr
    port="$(kafka_node_port "$i")"
    cport="$(kafka_node_controller_port "$i")"
    rf=$(( KAFKA_BROKERS < 3 ? KAFKA_BROKERS : 3 ))
    isr=$(( rf > 1 ? rf - 1 : 1 ))
    cat <<EOF

# ---- cluster node $i of $KAFKA_BROKERS (scripts/services.d/kafka-cluster.sh) ----
node.id=$i
controller.quorum.voters=$(kafka_cluster_voters)
# plaintext on loopback (a development setting), whatever security the single-node template carries
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
authorizer.class.name=
log.dirs=$(kafka_node_dir "$i")/data
default.replication.factor=$rf
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
unclean.leader.election.enable=false
# three JVMs on a small machine
num.io.threads=2
num.network.threads=2
EOF
}

kafka_cluster_render() {  # kafka_cluster_render I: writes node I's server.properties
    local i="$1" dir
    dir="$(kafka_node_dir "$i")"
    mkdir -p "$dir/data" "$dir/logs"
    {
        sed -e "s|@KAFKA_PORT@|$(kafka_node_port "$i")|g" -e "s|@CONTROLLER_PORT@|$(kafka_node_controller_port "$i")|g" \
            -e "s|@DATA_DIR@|$dir/data|g" "$KAFKA_SRC/server.properties.in"
        kafka_cluster_node_overrides "$i"
    } >"$dir/server.properties.tmp"
    mv "$dir/server.properties.tmp" "$dir/server.properties"
}

kafka_cluster_id() {  # one id for every node, kept across restarts
    mkdir -p "$KCLUSTER_VAR"
    if ! [ -s "$KCLUSTER_VAR/cluster-id" ] || grep -q '^-' "$KCLUSTER_VAR/cluster-id"; then
        # Kafka's Uuid format, never starting with '-' (the storage tool would take it for an option)
        python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break
' >"$KCLUSTER_VAR/cluster-id"
    fi
    cat "$KCLUSTER_VAR/cluster-id"
}

kafka_cluster_format() {  # kafka_cluster_format I CLUSTER_ID
    local i="$1" id="$2" dir
    dir="$(kafka_node_dir "$i")"
    [ -f "$dir/data/meta.properties" ] && return 0
    kafka_java "$KAFKA_SRC/tools-log4j2.properties" kafka.tools.StorageTool \
        format -t "$id" -c "$dir/server.properties" --ignore-formatted >"$dir/logs/format.log" 2>&1 || {
        cat "$dir/logs/format.log" >&2
        die "formatting Kafka node $i failed (see $dir/logs/format.log; 'scripts/services wipe' for a clean slate)"
    }
}

kafka_node_healthy() { "${PROBE[@]}" kafka "$HOST" "$(kafka_node_port "$1")"; }

kafka_node_pid() { pid_ours "$(kafka_node_dir "$1")/kafka.pid" "$(kafka_node_dir "$1")/server.properties"; }

kafka_node_start() {  # kafka_node_start I: launch node I in the background (no wait)
    local i="$1" dir
    dir="$(kafka_node_dir "$i")"
    # shellcheck disable=SC2086  # KCLUSTER_HEAP is a list of JVM flags
    setsid nohup java $KCLUSTER_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >"$dir/logs/kafka.out" 2>&1 </dev/null 9>&- &
    echo $! >"$dir/kafka.pid"
}

# brokers the metadata of node I lists (0 when it does not answer)
kafka_node_brokers() {
    "${PROBE[@]}" -v kafka "$HOST" "$(kafka_node_port "$1")" 2>/dev/null | sed -n 's/.* brokers=\([0-9]*\).*/\1/p' | grep . || echo 0
}

kafka_cluster_up() {
    kafka_cluster_check_size
    local i port cport id deadline
    java_check
    kafka_fetch
    for i in $(seq 1 "$KAFKA_BROKERS"); do
        kafka_node_pid "$i" >/dev/null && continue
        port="$(kafka_node_port "$i")"
        cport="$(kafka_node_controller_port "$i")"
        if port_open "$HOST" "$port" || port_open "$HOST" "$cport"; then
            die "port $port or $cport (Kafka node $i of $KAFKA_BROKERS) is taken by a process this script did not start: free it or set RISKMON_KAFKA_PORT"
        fi
    done
    id="$(kafka_cluster_id)"
    for i in $(seq 1 "$KAFKA_BROKERS"); do
        kafka_node_pid "$i" >/dev/null && continue
        kafka_cluster_render "$i"
        kafka_cluster_format "$i" "$id"
        kafka_node_start "$i"
    done
    # healthy = every node answers and lists all N brokers in its metadata
    deadline=$((SECONDS + TIMEOUT))
    for i in $(seq 1 "$KAFKA_BROKERS"); do
        while [ "$(kafka_node_brokers "$i")" -lt "$KAFKA_BROKERS" ]; do
            if ! kafka_node_pid "$i" >/dev/null; then
                note "Kafka node $i exited during start-up; last lines of its log:"
                tail -n 30 "$(kafka_node_dir "$i")/logs/kafka.out" >&2 2>/dev/null || true
                die "Kafka node $i failed to start (see $(kafka_node_dir "$i")/logs/)"
            fi
            if [ "$SECONDS" -ge "$deadline" ]; then
                tail -n 30 "$(kafka_node_dir "$i")/logs/server.log" >&2 2>/dev/null || true
                die "Kafka node $i did not see all $KAFKA_BROKERS brokers within ${TIMEOUT} s (raise RISKMON_SERVICES_TIMEOUT or see $(kafka_node_dir "$i")/logs/)"
            fi
            sleep 0.5
        done
    done
}

# stops every node that has a pid file under $KCLUSTER_VAR (whatever RISKMON_KAFKA_BROKERS is now)
kafka_cluster_down() {
    local dir pid
    # SIGTERM every node first: the last broker of a cluster stopped one by one waits for a controller
    # quorum that is already gone, and would only stop at the SIGKILL 30 s later
    for dir in "$KCLUSTER_VAR"/node-*; do
        [ -d "$dir" ] || continue
        if pid="$(pid_ours "$dir/kafka.pid" "$dir/server.properties")"; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for dir in "$KCLUSTER_VAR"/node-*; do
        [ -d "$dir" ] || continue
        stop_pid "kafka ${dir##*/}" "$dir/kafka.pid" "$dir/server.properties"
    done
}

kafka_cluster_status() {  # one line per node; returns 1 unless every node is healthy
    kafka_cluster_check_size
    local i ok=0 port pid brokers
    for i in $(seq 1 "$KAFKA_BROKERS"); do
        port="$(kafka_node_port "$i")"
        if pid="$(kafka_node_pid "$i")"; then pid="pid $pid"; else pid="not running"; fi
        if kafka_node_healthy "$i"; then
            brokers="$(kafka_node_brokers "$i")"
            echo "kafka-$i up    $HOST:$port controller $HOST:$(kafka_node_controller_port "$i") ($pid; sees $brokers of $KAFKA_BROKERS brokers)"
            [ "$brokers" -ge "$KAFKA_BROKERS" ] || ok=1
        else
            echo "kafka-$i down  $HOST:$port ($pid)"
            ok=1
        fi
    done
    echo "kafka bootstrap $(kafka_cluster_bootstrap)"
    return "$ok"
}

kafka_cluster_logs() {
    local dir
    for dir in "$KCLUSTER_VAR"/node-*; do
        [ -d "$dir" ] || continue
        echo "==> $dir/logs/server.log <=="
        tail -n "$LOG_LINES" "$dir/logs/server.log" 2>/dev/null || echo "(none)"
    done
}

kafka_cluster_wipe() { kafka_cluster_down; rm -rf "$KCLUSTER_VAR"; }
