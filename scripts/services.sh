#!/usr/bin/env bash
# Real Redis and a real single-node Apache Kafka (KRaft, combined broker+controller) for the tests and
# for `make cluster`, installed and run by the project itself (no containers, no system services).
#
#   scripts/services.sh install
#       redis-server from Debian (apt-get, only when missing; the system service is not started),
#       Kafka's jars from Maven Central (scripts/kafka-pom.xml, pinned) into .cache/kafka/libs, a log4j2
#       config, and a class-data-sharing archive of the broker's classes (.cache/kafka/kafka.jsa) that
#       roughly halves the broker's start time. Skips whatever is already there; offline after the
#       first run.
#   scripts/services.sh start-redis PORT DIR
#   scripts/services.sh start-kafka PORT CONTROLLER_PORT DIR
#       Start in the background on 127.0.0.1 only, data and logs under DIR/redis or DIR/kafka, pidfile
#       there; wait until ready (Redis answers PING / the broker logs "Kafka Server started"), print
#       where it listens. Starting again on the same DIR keeps the data (Kafka is formatted once).
#       Already running there: says so and exits 0. Not ready in time: stops it, prints the last log
#       lines, exits 1.
#   scripts/services.sh stop DIR [redis|kafka]
#       TERM what was started under DIR (by pidfile), KILL after a timeout.
#   scripts/services.sh status DIR
#       One line per service; exit 0 if everything started there is running, 1 otherwise.
#
#   scripts/services.sh install-mariadb | start-galera PORT1 PORT2 DIR | start-mariadb PORT DIR |
#                       stop-mariadb DIR [galera|single|n1|n2|garbd] | status-mariadb DIR
#       MariaDB for the IM store (a Galera pair with garbd, or one node): scripts/mariadb.sh.
#
# Environment: IMGATE_CACHE (default <repo>/.cache), KAFKA_START_TIMEOUT (60 s), REDIS_START_TIMEOUT
# (15 s), STOP_TIMEOUT (30 s), KAFKA_HEAP_OPTS (-Xms256m -Xmx512m), KAFKA_JVM_OPTS (JIT/GC flags; the
# default favours start time over peak throughput: C1 only).
set -euo pipefail
export LC_ALL=C  # one sort order for the class path (the CDS archive records it)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${IMGATE_CACHE:-$ROOT/.cache}"
KAFKA_HOME="$CACHE/kafka"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_POM="$ROOT/scripts/kafka-pom.xml"
KAFKA_LOG4J="$KAFKA_HOME/log4j2.properties"
KAFKA_JSA="$KAFKA_HOME/kafka.jsa"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-15}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"

say() { echo "services: $*"; }
die() { echo "services: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------------- install

apt_install() {  # apt_install PKG... : install Debian packages without starting their services
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || die "need root (or sudo) to apt-get install $*"
        sudo="sudo -n"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d answering 101 keeps maintainer scripts from starting the system redis-server.
    local policy=/usr/sbin/policy-rc.d made_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    if ! apt-cache show "$@" >/dev/null 2>&1; then $sudo apt-get update -q || true; fi
    $sudo apt-get install -y -q "$@" || { $sudo apt-get update -q && $sudo apt-get install -y -q "$@"; } || rc=$?
    if [ -n "$made_policy" ]; then $sudo rm -f "$policy"; fi
    return $rc
}

pom_hash() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

kafka_classpath() {  # explicit, sorted: the CDS archive needs the same class path at dump and at use
    local jars=("$KAFKA_LIBS"/*.jar)
    [ -e "${jars[0]}" ] || die "Kafka's jars are missing in $KAFKA_LIBS: run scripts/services.sh install"
    local IFS=:
    echo "${jars[*]}"
}

jsa_stamp() {  # what the CDS archive depends on: the JVM and the jars
    { java -version 2>&1; kafka_classpath; pom_hash; } | sha256sum | cut -d' ' -f1
}

write_log4j() {
    mkdir -p "$KAFKA_HOME"
    cat >"$KAFKA_LOG4J.tmp" <<'EOF'
# Kafka broker logging for imgate's tests and `make cluster`: to ${kafka.logs.dir}/server.log, not the console.
status = warn
shutdownHook = disable
name = imgate-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# the chattiest loggers, kept to warnings
logger.kafkalog.name = org.apache.kafka.storage.internals.log
logger.kafkalog.level = WARN
logger.kafkaconfig.name = org.apache.kafka.common.config.AbstractConfig
logger.kafkaconfig.level = WARN
EOF
    mv "$KAFKA_LOG4J.tmp" "$KAFKA_LOG4J"
}

install_redis() {
    if have redis-server && have redis-cli; then
        say "redis-server present: $(redis-server --version | cut -d' ' -f1-3)"
        return
    fi
    say "installing redis-server (apt-get)"
    apt_install redis-server redis-tools
    have redis-server && have redis-cli || die "redis-server/redis-cli still missing after apt-get install"
    say "redis-server installed: $(redis-server --version | cut -d' ' -f1-3)"
}

install_java_maven() {
    local pkgs=()
    have java || pkgs+=(openjdk-17-jre-headless)
    have mvn || pkgs+=(maven)
    if [ ${#pkgs[@]} -gt 0 ]; then
        say "installing ${pkgs[*]} (apt-get)"
        apt_install "${pkgs[@]}"
    fi
    have java || die "java is missing"
}

install_kafka() {
    local hash; hash="$(pom_hash)"
    if [ -f "$KAFKA_LIBS/.pom.sha256" ] && [ "$(cat "$KAFKA_LIBS/.pom.sha256")" = "$hash" ]; then
        say "Kafka jars present in ${KAFKA_LIBS#$ROOT/}"
    else
        install_java_maven
        have mvn || die "mvn is missing"
        say "fetching Kafka's jars (Maven, scripts/kafka-pom.xml)"
        rm -rf "$KAFKA_LIBS.tmp"
        mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
            -DoutputDirectory="$KAFKA_LIBS.tmp" -DincludeScope=runtime 2>&1 </dev/null \
            | sed 's/\x1b\[[0-9;]*m//g' || die "mvn dependency:copy-dependencies failed"
        echo "$hash" >"$KAFKA_LIBS.tmp/.pom.sha256"
        rm -rf "$KAFKA_LIBS" "$KAFKA_JSA" "$KAFKA_JSA.stamp"
        mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
        local jars=("$KAFKA_LIBS"/*.jar)
        say "Kafka jars: ${#jars[@]} in ${KAFKA_LIBS#$ROOT/} ($(du -sh "$KAFKA_LIBS" | cut -f1))"
    fi
    write_log4j
    install_java_maven
    local stamp; stamp="$(jsa_stamp)"
    if [ -f "$KAFKA_JSA" ] && [ "$(cat "$KAFKA_JSA.stamp" 2>/dev/null)" = "$stamp" ]; then
        say "Kafka class-data archive present"
        return
    fi
    # One throwaway broker run dumps the classes it loaded; later starts map them (-XX:SharedArchiveFile).
    say "building Kafka's class-data archive (one throwaway broker start)"
    rm -f "$KAFKA_JSA" "$KAFKA_JSA.stamp"
    local tmp ports
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/imgate-kafka-warmup.XXXXXX")"
    ports="$(free_ports 2)"
    # (a subshell: start_kafka exits on failure)
    rm -f "$KAFKA_JSA.tmp"
    ( KAFKA_DUMP_JSA="$KAFKA_JSA.tmp" start_kafka $ports "$tmp" >/dev/null ) || true
    stop_one "$tmp" kafka >/dev/null 2>&1 || true  # the JVM writes the archive as it exits
    if [ -s "$KAFKA_JSA.tmp" ]; then
        mv -f "$KAFKA_JSA.tmp" "$KAFKA_JSA"
        echo "$stamp" >"$KAFKA_JSA.stamp"
        say "Kafka class-data archive: ${KAFKA_JSA#$ROOT/} ($(du -h "$KAFKA_JSA" | cut -f1))"
    else
        rm -f "$KAFKA_JSA.tmp"
        say "warning: no class-data archive was written; Kafka starts without it (slower)"
    fi
    rm -rf "$tmp"
}

free_ports() {  # free_ports N : N free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ------------------------------------------------------------------------------------------- processes

pid_alive() {  # pid_alive PIDFILE PATTERN : the pidfile's process runs and its command line matches
    local pidfile="$1" pattern="$2" pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    local cmdline; cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$pattern"* ]]
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_port_arg() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ] || die "bad port: $1"; }

launch() {  # launch PIDFILE OUTFILE CMD... : detached (own session, no inherited fds), pid into PIDFILE
    local pidfile="$1" out="$2"; shift 2
    rm -f "$pidfile"
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$out" 2>&1 &
    local _
    for _ in $(seq 1 100); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
    die "could not launch $1"
}

show_log() {  # show_log FILE [N]
    echo "---- last lines of $1 ----" >&2
    tail -n "${2:-40}" "$1" >&2 2>/dev/null || echo "(no log)" >&2
    echo "----" >&2
}

start_redis() {
    [ $# -eq 2 ] || die "usage: start-redis PORT DIR"
    local port="$1" dir; check_port_arg "$port"
    have redis-server || die "redis-server is missing: run scripts/services.sh install"
    mkdir -p "$2/redis"; dir="$(cd "$2/redis" && pwd)"
    local pidfile="$dir/redis.pid" log="$dir/redis.log"
    if pid_alive "$pidfile" redis-server; then
        say "redis already running (pid $(cat "$pidfile")) on 127.0.0.1:$(cat "$dir/port" 2>/dev/null)"
        return 0
    fi
    if port_open "$port"; then die "redis: 127.0.0.1:$port is already in use"; fi
    echo "$port" >"$dir/port"
    # appendonly: data survives stop/start, for the failure tests that restart Redis
    launch "$pidfile" "$log" redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
        --daemonize no --logfile "$log" --save "" --appendonly yes --appendfsync everysec \
        --protected-mode yes --databases 16
    local pid; pid="$(cat "$pidfile")"
    local deadline=$((SECONDS + REDIS_START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; then
            say "redis ready on 127.0.0.1:$port (pid $pid, dir $dir, url redis://127.0.0.1:$port/0)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { show_log "$log"; rm -f "$pidfile"; die "redis exited before it was ready (port $port)"; }
        sleep 0.05
    done
    show_log "$log"
    stop_one "$2" redis >/dev/null 2>&1 || true
    die "redis not ready within ${REDIS_START_TIMEOUT}s on 127.0.0.1:$port"
}

new_cluster_id() {  # what kafka.tools.StorageTool random-uuid prints, without starting a JVM
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
        [[ "$id" == -* ]] || { echo "$id"; return; }
    done
}

start_kafka() {
    [ $# -eq 3 ] || die "usage: start-kafka PORT CONTROLLER_PORT DIR"
    local port="$1" cport="$2" dir; check_port_arg "$port"; check_port_arg "$cport"
    [ "$port" != "$cport" ] || die "PORT and CONTROLLER_PORT must differ"
    have java || die "java is missing: run scripts/services.sh install"
    local cp; cp="$(kafka_classpath)"
    [ -f "$KAFKA_LOG4J" ] || write_log4j
    mkdir -p "$3/kafka"; dir="$(cd "$3/kafka" && pwd)"
    local pidfile="$dir/kafka.pid" logs="$dir/logs" data="$dir/data" props="$dir/server.properties"
    if pid_alive "$pidfile" kafka.Kafka; then
        say "kafka already running (pid $(cat "$pidfile")) on 127.0.0.1:$(cat "$dir/port" 2>/dev/null)"
        return 0
    fi
    local p; for p in "$port" "$cport"; do
        if port_open "$p"; then die "kafka: 127.0.0.1:$p is already in use"; fi
    done
    mkdir -p "$logs" "$data"
    echo "$port" >"$dir/port"
    cat >"$props" <<EOF
# single-node KRaft (combined broker + controller), written by scripts/services.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data
# one node: internal topics with one replica, else group commits and transactions hang
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
# after a crash (SIGKILL) the restarted broker can register only once its old session timed out (9 s
# by default): shorter, so a killed broker is back in ~5 s
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
# a small machine
num.network.threads=2
num.io.threads=4
background.threads=4
log.cleaner.threads=1
EOF
    # shellcheck disable=SC2206
    local jvm=(java -cp "$cp" $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS
               "-XX:ErrorFile=$logs/hs_err_%p.log"
               "-Dkafka.logs.dir=$logs" "-Dlog4j2.configurationFile=$KAFKA_LOG4J")
    local broker=()
    if [ -n "${KAFKA_DUMP_JSA:-}" ]; then
        broker+=("-XX:ArchiveClassesAtExit=$KAFKA_DUMP_JSA")
    elif [ -s "$KAFKA_JSA" ]; then
        jvm+=("-XX:SharedArchiveFile=$KAFKA_JSA" "-Xlog:cds=off" "-Xlog:cds+dynamic=off")
    fi
    local t0=$SECONDS
    if [ ! -f "$data/meta.properties" ]; then
        local cid; cid="$(cat "$dir/cluster.id" 2>/dev/null || true)"
        [ -n "$cid" ] || { cid="$(new_cluster_id)"; echo "$cid" >"$dir/cluster.id"; }
        "${jvm[@]}" kafka.tools.StorageTool format -t "$cid" -c "$props" -g >>"$logs/format.log" 2>&1 \
            || { show_log "$logs/format.log"; die "kafka: formatting $data failed"; }
    fi
    local log="$logs/server.log"; touch "$log"
    local offset; offset="$(stat -c %s "$log")"
    launch "$pidfile" "$logs/stdout.log" "${jvm[@]}" ${broker[@]+"${broker[@]}"} kafka.Kafka "$props"
    local pid; pid="$(cat "$pidfile")"
    local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        # (grep -c reads to the end: no SIGPIPE for tail under pipefail)
        if [ "$(tail -c +"$((offset + 1))" "$log" | grep -c "Kafka Server started")" != 0 ] && port_open "$port"; then
            say "kafka ready on 127.0.0.1:$port (controller 127.0.0.1:$cport, pid $pid, dir $dir, log $log, $((SECONDS - t0))s)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log "$log"; show_log "$logs/stdout.log" 20; rm -f "$pidfile"
            die "kafka exited before it was ready (127.0.0.1:$port)"
        fi
        sleep 0.1
    done
    show_log "$log"; show_log "$logs/stdout.log" 20
    stop_one "$3" kafka >/dev/null 2>&1 || true
    die "kafka not ready within ${KAFKA_START_TIMEOUT}s on 127.0.0.1:$port"
}

stop_one() {  # stop_one DIR NAME
    local name="$2" pidfile pattern
    case "$name" in
        redis) pidfile="$1/redis/redis.pid"; pattern=redis-server ;;
        kafka) pidfile="$1/kafka/kafka.pid"; pattern=kafka.Kafka ;;
        *) die "unknown service: $name" ;;
    esac
    [ -f "$pidfile" ] || return 0
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"; say "$name was not running"; return 0
    fi
    local pid; pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) still running after ${STOP_TIMEOUT}s: KILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    fi
    rm -f "$pidfile"
    say "$name stopped (pid $pid)"
}

stop() {
    [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: stop DIR [redis|kafka]"
    [ -d "$1" ] || { say "nothing under $1"; return 0; }
    if [ $# -eq 2 ]; then stop_one "$1" "$2"; return; fi
    stop_one "$1" kafka
    stop_one "$1" redis
    if [ -d "$1/galera" ] || [ -d "$1/mariadb" ]; then bash "$ROOT/scripts/mariadb.sh" stop "$1"; fi
}

status() {
    [ $# -eq 1 ] || die "usage: status DIR"
    local rc=0 name pidfile pattern seen=""
    for name in redis kafka; do
        case "$name" in
            redis) pidfile="$1/redis/redis.pid"; pattern=redis-server ;;
            kafka) pidfile="$1/kafka/kafka.pid"; pattern=kafka.Kafka ;;
        esac
        [ -d "$1/$name" ] || continue
        seen=1
        if pid_alive "$pidfile" "$pattern"; then
            echo "$name: running (pid $(cat "$pidfile")) on 127.0.0.1:$(cat "$1/$name/port" 2>/dev/null)"
        else
            echo "$name: stopped"; rc=1
        fi
    done
    [ -n "$seen" ] || { echo "nothing was started under $1"; rc=1; }
    return $rc
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

cmd="${1:-}"; [ $# -gt 0 ] && shift
lock_install() {  # one install at a time (concurrent test sessions on one machine)
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.install.lock"
    if have flock; then flock 9; fi
}

case "$cmd" in
    install) lock_install; install_redis; install_kafka; bash "$ROOT/scripts/mariadb.sh" install ;;
    install-mariadb) lock_install; bash "$ROOT/scripts/mariadb.sh" install ;;
    start-galera) exec bash "$ROOT/scripts/mariadb.sh" start-galera "$@" ;;
    start-mariadb) exec bash "$ROOT/scripts/mariadb.sh" start-single "$@" ;;
    stop-mariadb) exec bash "$ROOT/scripts/mariadb.sh" stop "$@" ;;
    status-mariadb) exec bash "$ROOT/scripts/mariadb.sh" status "$@" ;;
    install-redis) lock_install; install_redis ;;
    install-kafka) lock_install; install_kafka ;;
    start-redis) start_redis "$@" ;;
    start-kafka) start_kafka "$@" ;;
    stop) stop "$@" ;;
    status) status "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
