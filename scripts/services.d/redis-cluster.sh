# shellcheck shell=bash
# Sourced by scripts/services: a Redis Cluster on loopback from Debian's redis-server, used when
# RISKMON_REDIS_CLUSTER is 1 or more (the number of masters; the single-instance path is unchanged).
#
#   node i (1..M*(1+R)): port RISKMON_REDIS_PORT + i - 1 (cluster bus: port + 10000)
#   M = RISKMON_REDIS_CLUSTER masters, R = RISKMON_REDIS_CLUSTER_REPLICAS (default 1) replicas each
#   state  $VAR/redis-cluster/node-i/{redis.conf,data/,redis.pid,redis.log}
# The first start creates the cluster with `redis-cli --cluster create ... --cluster-replicas R`
# (16384 slots split over the masters); later starts reuse each node's nodes.conf.
# RISKMON_REDIS_APPENDFSYNC (everysec) and RISKMON_REDIS_CLUSTER_NODE_TIMEOUT_MS (3000: how long a
# master may be silent before its replica is promoted) are written into every node's config.
#
# Uses from scripts/services: HOST VAR REDIS_PORT TIMEOUT PROBE and the helpers note die pid_ours
# stop_pid port_open apt_install.

REDIS_CLUSTER="${RISKMON_REDIS_CLUSTER:-0}"
REDIS_CLUSTER_REPLICAS="${RISKMON_REDIS_CLUSTER_REPLICAS:-1}"
RCLUSTER_VAR="$VAR/redis-cluster"
RCLUSTER_FSYNC="${RISKMON_REDIS_APPENDFSYNC:-everysec}"
RCLUSTER_NODE_TIMEOUT_MS="${RISKMON_REDIS_CLUSTER_NODE_TIMEOUT_MS:-3000}"

redis_cluster_enabled() { [ "$REDIS_CLUSTER" -gt 0 ] 2>/dev/null; }

redis_cluster_check_size() {
    case "$REDIS_CLUSTER$REDIS_CLUSTER_REPLICAS" in
        *[!0-9]*) die "RISKMON_REDIS_CLUSTER and RISKMON_REDIS_CLUSTER_REPLICAS must be whole numbers" ;;
    esac
    [ "$REDIS_CLUSTER" -ge 3 ] || die "RISKMON_REDIS_CLUSTER=$REDIS_CLUSTER: Redis Cluster needs at least 3 masters"
    case "$RCLUSTER_FSYNC" in
        always|everysec|no) ;;
        *) die "RISKMON_REDIS_APPENDFSYNC must be always, everysec or no, got '$RCLUSTER_FSYNC'" ;;
    esac
}

redis_cluster_size() { echo $((REDIS_CLUSTER * (1 + REDIS_CLUSTER_REPLICAS))); }
redis_node_port() { echo $((REDIS_PORT + $1 - 1)); }
redis_node_dir() { echo "$RCLUSTER_VAR/node-$1"; }
redis_node_pid() { pid_ours "$(redis_node_dir "$1")/redis.pid" "cwd=$(redis_node_dir "$1")/data/"; }
redis_cli_node() { local i="$1"; shift; redis-cli -h "$HOST" -p "$(redis_node_port "$i")" "$@"; }

redis_cluster_url() {  # the URL riskmon's settings take for this cluster (any node is a seed)
    echo "redis+cluster://$HOST:$(redis_node_port 1)/0"
}

redis_cluster_render() {
    local i="$1" dir
    dir="$(redis_node_dir "$i")"
    mkdir -p "$dir/data"
    cat >"$dir/redis.conf" <<EOF
# written by scripts/services (scripts/services.d/redis-cluster.sh); edits are overwritten on the next 'up'
bind $HOST
port $(redis_node_port "$i")
protected-mode yes
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
loglevel notice
dir $dir/data
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout $RCLUSTER_NODE_TIMEOUT_MS
cluster-require-full-coverage yes
appendonly yes
appendfsync $RCLUSTER_FSYNC
save ""
hash-max-listpack-entries 64
EOF
}

# cluster_state:ok as seen by node I
redis_node_cluster_ok() { redis_cli_node "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'; }

# node I is a master, or a replica whose link to its master is up (its first full sync is done).
# A replica that never completed a sync cannot be promoted ("Disconnected from master for longer
# than allowed"): a master killed before that leaves its slots without an owner for good.
redis_node_replica_synced() {
    local info
    info="$(redis_cli_node "$1" info replication 2>/dev/null | tr -d '\r')"
    grep -qx 'role:master' <<<"$info" && return 0
    grep -qx 'master_link_status:up' <<<"$info" && ! grep -qx 'master_sync_in_progress:1' <<<"$info"
}

redis_cluster_up() {
    redis_cluster_check_size
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
    local n i port deadline nodes=() known
    n="$(redis_cluster_size)"
    for i in $(seq 1 "$n"); do
        redis_node_pid "$i" >/dev/null && continue
        port="$(redis_node_port "$i")"
        port_open "$HOST" "$port" && die "port $port (Redis node $i of $n) is taken by a process this script did not start: free it or set RISKMON_REDIS_PORT"
        redis_cluster_render "$i"
        redis-server "$(redis_node_dir "$i")/redis.conf" >/dev/null 2>>"$(redis_node_dir "$i")/redis.log" 9>&- \
            || die "redis-server node $i failed to start (see $(redis_node_dir "$i")/redis.log)"
    done
    deadline=$((SECONDS + TIMEOUT))
    for i in $(seq 1 "$n"); do
        until "${PROBE[@]}" redis "$HOST" "$(redis_node_port "$i")"; do
            [ "$SECONDS" -lt "$deadline" ] || die "Redis node $i did not answer within ${TIMEOUT} s (see $(redis_node_dir "$i")/redis.log)"
            sleep 0.2
        done
        nodes+=("$HOST:$(redis_node_port "$i")")
    done
    # create the cluster once: a fresh node knows only itself
    known="$(redis_cli_node 1 cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')"
    if [ "${known:-1}" -le 1 ]; then
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REDIS_CLUSTER_REPLICAS" --cluster-yes \
            >"$RCLUSTER_VAR/create.log" 2>&1 || {
            tail -n 20 "$RCLUSTER_VAR/create.log" >&2
            die "redis-cli --cluster create failed (see $RCLUSTER_VAR/create.log; 'scripts/services wipe' for a clean slate)"
        }
    fi
    redis_cluster_wait_all "$n" "$deadline" redis_node_cluster_ok "Redis Cluster not ok" "cluster info"
    # healthy means every replica can take over: wait for each one's sync with its master
    redis_cluster_wait_all "$n" "$deadline" redis_node_replica_synced "replica not in sync with its master" "info replication"
}

# redis_cluster_wait_all N DEADLINE CHECK WHAT CLI_ARGS: wait until CHECK i holds for every node i, or die
redis_cluster_wait_all() {
    local n="$1" deadline="$2" check="$3" what="$4" cli="$5" i
    for i in $(seq 1 "$n"); do
        until "$check" "$i"; do
            [ "$SECONDS" -lt "$deadline" ] || die "Redis node $i: $what within ${TIMEOUT} s (redis-cli -p $(redis_node_port "$i") $cli)"
            sleep 0.2
        done
    done
}

redis_cluster_down() {
    local dir
    for dir in "$RCLUSTER_VAR"/node-*; do
        [ -d "$dir" ] || continue
        stop_pid "redis ${dir##*/}" "$dir/redis.pid" "cwd=$dir/data/"
    done
}

redis_cluster_status() {  # one line per node (role, slots); returns 1 unless every node is up and the cluster ok
    redis_cluster_check_size
    local i n ok=0 port pid role
    n="$(redis_cluster_size)"
    for i in $(seq 1 "$n"); do
        port="$(redis_node_port "$i")"
        if pid="$(redis_node_pid "$i")"; then pid="pid $pid"; else pid="not running"; fi
        if "${PROBE[@]}" redis "$HOST" "$port"; then
            role="$(redis_cli_node "$i" role 2>/dev/null | head -n 1 | tr -d '\r')"
            if redis_node_cluster_ok "$i"; then
                echo "redis-$i up    $HOST:$port $role, cluster ok ($pid)"
            else
                echo "redis-$i up    $HOST:$port $role, cluster NOT ok ($pid)"
                ok=1
            fi
        else
            echo "redis-$i down  $HOST:$port ($pid)"
            ok=1
        fi
    done
    echo "redis url $(redis_cluster_url)"
    return "$ok"
}

redis_cluster_logs() {
    local dir
    for dir in "$RCLUSTER_VAR"/node-*; do
        [ -d "$dir" ] || continue
        echo "==> $dir/redis.log <=="
        tail -n "$LOG_LINES" "$dir/redis.log" 2>/dev/null || echo "(none)"
    done
}

redis_cluster_wipe() { redis_cluster_down; rm -rf "$RCLUSTER_VAR"; }
