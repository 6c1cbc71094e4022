#!/usr/bin/env bash
# MariaDB for the IM store's tests and `make cluster`: a Galera pair (two mariadbd + garbd, the
# arbitrator that keeps the surviving node primary when the other dies) or one plain node, on loopback,
# run by the project itself (no systemd). scripts/services.sh hands its mariadb commands to this file.
#
#   scripts/mariadb.sh install
#       apt-get install mariadb-server galera-arbitrator-4 when mariadbd or garbd is missing (the system
#       service is not started).
#   scripts/mariadb.sh start-galera PORT1 PORT2 DIR
#       Nodes n1 (PORT1) and n2 (PORT2) and garbd under DIR/galera; the group's other ports are picked
#       free once and kept in DIR/galera/ports. From nothing: n1 bootstraps, garbd joins, n2 joins (copy
#       by rsync SST). Again on the same DIR: starts only what is not running (a killed node rejoins;
#       with both nodes down n1 bootstraps from its own data). Waits until every node is Synced.
#   scripts/mariadb.sh start-single PORT DIR
#       One plain node under DIR/mariadb.
#   scripts/mariadb.sh stop DIR [galera|single|n1|n2|garbd]
#       TERM (KILL after STOP_TIMEOUT) by pidfile; the pair in the order garbd, n2, n1 (the last to
#       leave is the one that may bootstrap again).
#   scripts/mariadb.sh status DIR
#
# Every node has a user 'test'@'%' without password (all privileges) and a database `im`.
# Environment: MARIADB_START_TIMEOUT (60 s), STOP_TIMEOUT (30 s).
set -euo pipefail

MARIADB_START_TIMEOUT="${MARIADB_START_TIMEOUT:-60}"
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"
GALERA_LIB=/usr/lib/galera/libgalera_smm.so
# a dead node is evicted after ~3 s (default 5-6 s); keepalive must stay below suspect/3
EVS="evs.suspect_timeout=PT2S;evs.keepalive_period=PT0.5S"

say() { echo "mariadb: $*"; }
die() { echo "mariadb: $*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

install() {
    if have mariadbd && have garbd && have mariadb-install-db; then
        say "mariadb-server and garbd present: $(mariadbd --version | cut -d' ' -f1-4)"
        return
    fi
    say "installing mariadb-server galera-arbitrator-4 (apt-get)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then have sudo || die "need root (or sudo) to apt-get install"; sudo="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d answering 101 keeps the packages' scripts from starting the system mariadb and garb
    local policy=/usr/sbin/policy-rc.d made=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod 755 "$policy" && made=1
    fi
    local rc=0
    $sudo apt-get install -y -q mariadb-server galera-arbitrator-4 >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q mariadb-server galera-arbitrator-4 >/dev/null; } \
        || rc=$?
    [ -z "$made" ] || $sudo rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get install mariadb-server galera-arbitrator-4 failed ($rc)"
    have mariadbd && have garbd || die "mariadbd/garbd still missing after apt-get install"
    say "installed: $(mariadbd --version | cut -d' ' -f1-4)"
}

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

pid_alive() {  # pid_alive PIDFILE PATTERN
    local pid; pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$2"* ]]
}

launch() {  # launch PIDFILE OUTFILE CMD... : own session, pid into PIDFILE
    local pidfile="$1" out="$2"; shift 2
    rm -f "$pidfile"
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$out" 2>&1 &
    local _; for _ in $(seq 1 100); do [ -s "$pidfile" ] && return 0; sleep 0.02; done
    die "could not launch $*"
}

as_root() { [ "$(id -u)" -eq 0 ]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

query() {  # query NODEDIR SQL : one value, empty when the node does not answer
    mariadb -S "$1/mysqld.sock" -utest -N -B -e "$2" 2>/dev/null || true
}

status_var() { query "$1" "SELECT VARIABLE_VALUE FROM information_schema.global_status WHERE VARIABLE_NAME='$2'"; }

write_cnf() {  # write_cnf NODEDIR PORT [GALERA LINES...]
    local d="$1" port="$2"; shift 2
    mkdir -p "$d/data"
    {
        echo "[mysqld]"
        as_root && echo "user=mysql"
        cat <<EOF
datadir=$d/data
socket=$d/mysqld.sock
pid-file=$d/mysqld.pid
log-error=$d/error.log
port=$port
bind-address=127.0.0.1
skip-name-resolve
performance_schema=OFF
innodb_buffer_pool_size=64M
innodb_log_file_size=48M
EOF
        local line; for line in "$@"; do echo "$line"; done
    } >"$d/my.cnf"
}

init_datadir() {  # init_datadir NODEDIR : system tables, user test, database im
    local d="$1"
    printf "FLUSH PRIVILEGES;\nCREATE USER 'test'@'%%';\nGRANT ALL ON *.* TO 'test'@'%%' WITH GRANT OPTION;\nCREATE DATABASE im;\n" >"$d/users.sql"
    own "$d"
    mariadb-install-db --defaults-file="$d/my.cnf" --auth-root-authentication-method=socket --skip-test-db \
        --extra-file="$d/users.sql" >"$d/install.log" 2>&1 || { tail -20 "$d/install.log" >&2; die "mariadb-install-db failed in $d"; }
}

own() {  # mariadbd refuses to run as root: as root it runs as mysql, which must own its files
    if as_root; then chown -R mysql:mysql "$1"; fi
}

wait_node() {  # wait_node NODEDIR NAME WANT_SYNCED(0|1)
    local d="$1" name="$2" synced="$3" pid deadline=$((SECONDS + MARIADB_START_TIMEOUT))
    pid="$(cat "$d/$name.pid")"
    while [ $SECONDS -lt $deadline ]; do
        if [ "$synced" = 1 ]; then
            [ "$(status_var "$d" wsrep_local_state_comment)" = Synced ] && return 0
        else
            [ "$(query "$d" 'SELECT 1')" = 1 ] && return 0
        fi
        kill -0 "$pid" 2>/dev/null || { tail -30 "$d/error.log" >&2; die "$name exited before it was ready"; }
        sleep 0.1
    done
    tail -30 "$d/error.log" >&2
    stop_pid "$d/$name.pid" mariadbd "$name"
    die "$name not ready within ${MARIADB_START_TIMEOUT}s"
}

start_mariadbd() {  # start_mariadbd NODEDIR NAME ARGS...
    local d="$1" name="$2"; shift 2
    own "$d"
    launch "$d/$name.pid" "$d/stdout.log" mariadbd --defaults-file="$d/my.cnf" "$@"
}

base_dir() {  # base_dir DIR SUB : absolute DIR/SUB, traversable by the mysql user
    mkdir -p "$1/$2"
    chmod a+x "$1" "$1/$2"
    if as_root && have runuser && ! runuser -u mysql -- test -x "$1/$2"; then
        die "user mysql (mariadbd's) cannot reach $1/$2: a parent directory is closed to it; use another DIR"
    fi
    (cd "$1/$2" && pwd)
}

start_single() {
    [ $# -eq 2 ] || die "usage: start-single PORT DIR"
    local port="$1" b; b="$(base_dir "$2" mariadb)"
    have mariadbd || die "mariadbd is missing: run scripts/mariadb.sh install"
    if pid_alive "$b/mariadb.pid" mariadbd; then say "already running on 127.0.0.1:$(cat "$b/port")"; return 0; fi
    if port_open "$port"; then die "127.0.0.1:$port is already in use"; fi
    echo "$port" >"$b/port"
    write_cnf "$b" "$port"
    [ -d "$b/data/mysql" ] || init_datadir "$b"
    start_mariadbd "$b" mariadb
    wait_node "$b" mariadb 0
    say "ready on 127.0.0.1:$port (pid $(cat "$b/mariadb.pid"), dir $b)"
}

start_galera() {
    [ $# -eq 3 ] || die "usage: start-galera PORT1 PORT2 DIR"
    have mariadbd && have garbd || die "mariadbd/garbd missing: run scripts/mariadb.sh install"
    local b; b="$(base_dir "$3" galera)"
    [ -f "$b/ports" ] || echo "$1 $2 $(free_ports 7)" >"$b/ports"
    local p1 p2 g1 g2 g3 i1 i2 s1 s2
    read -r p1 p2 g1 g2 g3 i1 i2 s1 s2 <"$b/ports"
    [ "$p1 $p2" = "$1 $2" ] || die "$b was made for ports $p1 $p2, not $1 $2"
    local gcomm="gcomm://127.0.0.1:$g1,127.0.0.1:$g2,127.0.0.1:$g3"
    local n port g i s
    for n in 1 2; do
        eval "port=\$p$n g=\$g$n i=\$i$n s=\$s$n"
        write_cnf "$b/n$n" "$port" binlog_format=ROW default_storage_engine=InnoDB innodb_autoinc_lock_mode=2 \
            wsrep_on=ON "wsrep_provider=$GALERA_LIB" wsrep_cluster_name=imgate "wsrep_cluster_address=$gcomm" \
            "wsrep_node_name=n$n" "wsrep_node_address=127.0.0.1:$g" "wsrep_node_incoming_address=127.0.0.1:$port" \
            "wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:$g;ist.recv_addr=127.0.0.1:$i;gcache.size=32M;$EVS\"" \
            wsrep_sst_method=rsync "wsrep_sst_receive_address=127.0.0.1:$s"
    done
    local up1="" up2="" upg=""
    pid_alive "$b/n1/n1.pid" mariadbd && up1=1
    pid_alive "$b/n2/n2.pid" mariadbd && up2=1
    pid_alive "$b/garbd.pid" garbd && upg=1
    local t0=$SECONDS p
    for p in $([ -n "$up1" ] || echo "$p1 $g1") $([ -n "$up2" ] || echo "$p2 $g2") $([ -n "$upg" ] || echo "$g3"); do
        if port_open "$p"; then die "127.0.0.1:$p is already in use"; fi
    done
    if [ -z "$up1" ] && [ -z "$up2" ]; then
        # n1 founds the group: from a fresh datadir, or from its own data (a test pair: no quorum to ask)
        [ -d "$b/n1/data/mysql" ] || init_datadir "$b/n1"
        [ ! -f "$b/n1/data/grastate.dat" ] || sed -i 's/^safe_to_bootstrap:.*/safe_to_bootstrap: 1/' "$b/n1/data/grastate.dat"
        start_mariadbd "$b/n1" n1 --wsrep-new-cluster
        wait_node "$b/n1" n1 1
        up1=1
    fi
    local live="$b/n1"; [ -n "$up1" ] || live="$b/n2"
    if [ -z "$upg" ]; then
        local before; before="$(status_var "$live" wsrep_cluster_size)"
        # (in its dir: garbd writes its gvwstate.dat into the working directory)
        ( cd "$b" && launch "$b/garbd.pid" "$b/garbd.out" garbd --address "$gcomm" --group imgate \
            --options "gmcast.listen_addr=tcp://127.0.0.1:$g3;$EVS" --log "$b/garbd.log" )
        # joins in parallel churn for seconds: let garbd in first
        local deadline=$((SECONDS + MARIADB_START_TIMEOUT))
        until [ "$(status_var "$live" wsrep_cluster_size)" -gt "${before:-0}" ] 2>/dev/null; do
            [ $SECONDS -lt $deadline ] || die "garbd did not join within ${MARIADB_START_TIMEOUT}s"
            pid_alive "$b/garbd.pid" garbd || { tail -20 "$b/garbd.log" >&2; die "garbd exited"; }
            sleep 0.1
        done
    fi
    for n in 1 2; do
        eval "local up=\$up$n"
        [ -z "$up" ] || continue
        mkdir -p "$b/n$n/data"  # empty: the donor copies its data (SST)
        start_mariadbd "$b/n$n" "n$n"
        wait_node "$b/n$n" "n$n" 1
    done
    say "galera ready on 127.0.0.1:$p1 and 127.0.0.1:$p2 (n1 pid $(cat "$b/n1/n1.pid"), n2 pid $(cat "$b/n2/n2.pid"), garbd pid $(cat "$b/garbd.pid"), dir $b, $((SECONDS - t0))s)"
}

stop_pid() {  # stop_pid PIDFILE PATTERN NAME
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    local pid; pid="$(cat "$1")"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    fi
    rm -f "$1"
    say "$3 stopped (pid $pid)"
}

stop() {
    [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: stop DIR [galera|single|n1|n2|garbd]"
    local d="$1" what="${2:-all}"
    case "$what" in
        all) stop "$d" galera; stop "$d" single ;;
        galera) stop "$d" garbd; stop "$d" n2; stop "$d" n1 ;;
        single) stop_pid "$d/mariadb/mariadb.pid" mariadbd mariadb ;;
        n1|n2) stop_pid "$d/galera/$what/$what.pid" mariadbd "$what" ;;
        garbd) stop_pid "$d/galera/garbd.pid" garbd garbd ;;
        *) die "unknown: $what" ;;
    esac
}

status() {
    [ $# -eq 1 ] || die "usage: status DIR"
    local rc=0 name file pattern
    for name in n1 n2 garbd single; do
        case "$name" in
            n1|n2) file="$1/galera/$name/$name.pid"; pattern=mariadbd ;;
            garbd) file="$1/galera/garbd.pid"; pattern=garbd ;;
            single) file="$1/mariadb/mariadb.pid"; pattern=mariadbd ;;
        esac
        [ -e "$(dirname "$file")" ] || continue
        if pid_alive "$file" "$pattern"; then echo "$name: running (pid $(cat "$file"))"; else echo "$name: stopped"; rc=1; fi
    done
    return $rc
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

cmd="${1:-}"; [ $# -gt 0 ] && shift
case "$cmd" in
    install) install ;;
    start-galera) start_galera "$@" ;;
    start-single) start_single "$@" ;;
    stop) stop "$@" ;;
    status) status "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
esac
