#!/bin/sh
# The QEMU test inside the VM. The VM's root network namespace is the Talos node; the
# simulated tailnet lives in namespaces: `ctl` (headscale with its embedded DERP, and the
# router between the node's and the peer's subnets), `peer` (a real tailscaled with a web
# server), `pod` (a pod on the node, 10.244.0.2 behind a veth like a CNI's).
# The extension runs exactly as Talos would run it: talos-runner reads
# /usr/local/etc/containers/*.yaml and the ExtensionServiceConfig.
# Every assertion prints "CHECK <id>: <detail>"; the host (tests/qemu/run.sh) expects them
# in order. A failure prints "FAIL <id>: <why>" plus diagnostics and stops the test.
set -u
IP=/usr/sbin/ip
NFT=/usr/sbin/nft
LAB=/opt/lab/bin
HS_CFG=/run/lab/headscale/config.yaml
URL=http://192.168.10.1:8080
# The node reaches the control server by a name only the node's /etc/hosts knows: the spec
# mounts no /etc files, the service sees the node's through Talos's own default mounts.
NODE_URL=http://control.lab.test:8080
DOMAIN=tailnet.test
NODE_SOCK=/var/run/tailscale/tailscaled.sock
PEER_SOCK=/run/lab/peer/tailscaled.sock
MC=/run/lab/machine-config.yaml
RUNNER_LOG=/run/lab/talos-runner.log
export PATH=/sbin:/usr/sbin:/bin:/usr/bin

t() { cut -d' ' -f1 /proc/uptime; }
check() { echo "CHECK $1: $2 (t=$(t)s)"; }
diag() {
  echo "---- diagnostics ----"
  echo "## talos-runner log"; tail -n 80 "$RUNNER_LOG" 2>/dev/null
  echo "## ip rule"; $IP rule; $IP -6 rule
  echo "## ip route table 52"; $IP route show table 52 2>&1
  echo "## nft ruleset"; $NFT list ruleset 2>&1 | head -n 120
  echo "## processes"; ps -o pid,comm,args 2>/dev/null | head -n 40
  echo "## headscale log"; tail -n 30 /run/lab/headscale.log 2>/dev/null
  echo "## peer tailscaled log"; tail -n 30 /run/lab/peer-tailscaled.log 2>/dev/null
  echo "---- end of diagnostics ----"
}
fail() { echo "FAIL $1: $2 (t=$(t)s)"; diag; exit 1; }
# wait_for SECONDS CMD...: retries CMD every half second
wait_for() {
  local limit=$1 end
  shift
  end=$(($(date +%s) + limit))
  while ! "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$end" ] && return 1
    sleep 0.5
  done
}
in_ns() { local ns=$1; shift; $IP netns exec "$ns" "$@"; }
hs() { in_ns ctl $LAB/headscale -c "$HS_CFG" "$@"; }

# ---------------------------------------------------------------- the node and the lab
mkdir -p /run/lab /var/lib /var/run /etc/ssl
printf '127.0.0.1 localhost\n192.168.10.11 talos-node-1\n192.168.10.1 control.lab.test\n' >/etc/hosts
printf 'nameserver 192.168.10.1\n' >/etc/resolv.conf
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

$IP netns add ctl && $IP netns add peer && $IP netns add pod || fail lab "ip netns add"
in_ns ctl $IP link set lo up; in_ns peer $IP link set lo up; in_ns pod $IP link set lo up
# node <-> ctl (the node's lab subnet 192.168.10.0/24)
$IP link add lab0 type veth peer name ctl0 netns ctl
$IP addr add 192.168.10.11/24 dev lab0 && $IP link set lab0 up
in_ns ctl $IP addr add 192.168.10.1/24 dev ctl0 && in_ns ctl $IP link set ctl0 up
$IP route add default via 192.168.10.1
# peer <-> ctl (the peer's own subnet; ctl routes between the two)
in_ns ctl $IP link add ctl1 type veth peer name eth0 netns peer
in_ns ctl $IP addr add 192.168.20.1/24 dev ctl1 && in_ns ctl $IP link set ctl1 up
in_ns peer $IP addr add 192.168.20.21/24 dev eth0 && in_ns peer $IP link set eth0 up
in_ns peer $IP route add default via 192.168.20.1
in_ns ctl sysctl -qw net.ipv4.ip_forward=1
# pod <-> node (what a CNI does: a veth, the node routes the pod CIDR)
$IP link add pod0h type veth peer name eth0 netns pod
$IP addr add 10.244.0.1/24 dev pod0h && $IP link set pod0h up
in_ns pod $IP addr add 10.244.0.2/24 dev eth0 && in_ns pod $IP link set eth0 up
in_ns pod $IP route add default via 10.244.0.1
in_ns pod ping -c1 -W2 10.244.0.1 >/dev/null || fail lab "the pod cannot reach the node"
ping -c1 -W2 192.168.10.1 >/dev/null || fail lab "the node cannot reach ctl"
in_ns peer ping -c1 -W2 192.168.10.11 >/dev/null || fail lab "the peer cannot reach the node"

# headscale (control server + embedded DERP) in ctl
mkdir -p /run/lab/headscale
cat >/run/lab/headscale/policy.json <<'EOF'
{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}
EOF
cat >"$HS_CFG" <<EOF
server_url: $URL
listen_addr: 192.168.10.1:8080
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
grpc_allow_insecure: false
noise:
  private_key_path: /run/lab/headscale/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: 999
    region_code: lab
    region_name: Lab DERP
    verify_clients: true
    stun_listen_addr: 192.168.10.1:3478
    private_key_path: /run/lab/headscale/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 192.168.10.1
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite:
    path: /run/lab/headscale/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: /run/lab/headscale/policy.json
dns:
  magic_dns: true
  base_domain: $DOMAIN
  override_local_dns: false
  nameservers:
    global: []
    split: {}
unix_socket: /run/lab/headscale/headscale.sock
unix_socket_permission: "0770"
# The CLI's default 5 s deadline is too short under TCG on a busy host: a pre-auth key's
# database write alone was seen to exceed it ("context deadline exceeded").
cli:
  timeout: 60s
logtail:
  enabled: false
EOF
in_ns ctl $LAB/headscale -c "$HS_CFG" serve >/run/lab/headscale.log 2>&1 &
wait_for 120 test -S /run/lab/headscale/headscale.sock || fail lab "headscale did not start"
wait_for 60 hs users list || fail lab "headscale does not answer"
hs users create lab >/dev/null || fail lab "headscale users create"
# key NAME: a fresh 10-minute pre-auth key of user 1
key() { hs preauthkeys create --user 1 --expiration 10m -o json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p' | head -n1; }

# the peer: a real tailscaled in kernel TUN mode with a web server
mkdir -p /run/lab/peer /srv/peer && echo "hello from the peer" >/srv/peer/index.html
dd if=/dev/urandom of=/srv/peer/big bs=1024 count=512 2>/dev/null
in_ns peer env TS_DEBUG_USE_DERP_HTTP=1 TS_DEBUG_FIREWALL_MODE=nftables \
  $LAB/tailscaled --statedir=/run/lab/peer --socket=$PEER_SOCK --tun=tailscale0 \
  --no-logs-no-support --port=41641 >/run/lab/peer-tailscaled.log 2>&1 &
in_ns peer httpd -p 8080 -h /srv/peer
wait_for 60 test -S $PEER_SOCK || fail lab "the peer's tailscaled did not start"
PEER_KEY=$(key)
[ -n "$PEER_KEY" ] || fail lab "no pre-auth key for the peer"
in_ns peer $LAB/tailscale --socket=$PEER_SOCK up --login-server=$URL --auth-key="$PEER_KEY" \
  --hostname=peer --timeout=120s >/run/lab/peer-up.log 2>&1 || { cat /run/lab/peer-up.log; fail lab "the peer did not join"; }
PEER_IP=$(in_ns peer $LAB/tailscale --socket=$PEER_SOCK ip -4)
check lab "headscale $URL, peer joined as peer.$DOMAIN = $PEER_IP"

# ------------------------------------------------- the extension, as Talos would run it
SPECS=$(ls /usr/local/etc/containers/*.yaml)
out=$(talos-runner validate $SPECS) || { echo "$out"; fail spec "a service spec is invalid for Talos"; }
echo "$out"
echo "$out" | grep -q warning && fail spec "a service spec has keys Talos ignores"
[ -f /usr/local/etc/containers/tailscale.yaml ] || fail spec "no service named tailscale (ExtensionServiceConfig name: tailscale)"
[ -d /usr/local/lib/containers/tailscale ] || fail spec "no rootfs at /usr/local/lib/containers/tailscale"
check spec "$(echo $SPECS | wc -w) service spec(s) valid by Talos's own validation, no ignored keys"

# Talos services the extension may depend on: mark them up
mkdir -p /run/talos-runner/services && touch /run/talos-runner/services/containerd /run/talos-runner/services/cri

NODE_KEY=$(key)
write_config() { # write_config [KEY [repeated]]
  {
    echo "apiVersion: v1alpha1"
    echo "kind: ExtensionServiceConfig"
    echo "name: tailscale"
    echo "environment:"
    [ -n "${1:-}" ] && echo "  - TS_AUTHKEY=$1"
    echo "  - TS_EXTRA_ARGS=--login-server=$NODE_URL"
    echo "  - TS_HOSTNAME=node1"
    echo "  - TS_TAILSCALED_EXTRA_ARGS=--no-logs-no-support --port=41641"
    echo "  - TSBRIDGE_LAB_SUBNETS=192.168.10.0/24"
    echo "  - TS_DEBUG_USE_DERP_HTTP=1"
    echo "  - TS_DEBUG_FIREWALL_MODE=nftables"
    # a repeated variable: Talos passes both, the last one must win
    [ -n "${2:-}" ] && printf '  - TSBRIDGE_LOG_LEVEL=warn\n  - TSBRIDGE_LOG_LEVEL=info\n'
    # the restart check reads the reconcile passes; an unchanged pass is a debug event
    [ -z "${2:-}" ] && echo "  - TSBRIDGE_LOG_LEVEL=debug"
  } >"$MC"
}
RUNNER_PID=
start_runner() {
  if [ -f "$MC" ]; then
    talos-runner -config "$MC" >>"$RUNNER_LOG" 2>&1 &
  else
    talos-runner >>"$RUNNER_LOG" 2>&1 &
  fi
  RUNNER_PID=$!
}
# stop_runner: like machined stopping the service (SIGTERM to all, SIGKILL after 10 s);
# sets STOP_MS to the milliseconds it took.
ms_now() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
STOP_MS=
stop_runner() {
  local s
  s=$(ms_now)
  kill -TERM "$RUNNER_PID"
  wait "$RUNNER_PID"
  STOP_MS=$(($(ms_now) - s))
}
state() { cut -d' ' -f1 /run/talos-runner/ext-tailscale 2>/dev/null; }
svc_running() { [ "$(state)" = Running ]; }
# Running is reported at task start, before the container's init has exec'd the entrypoint
is_tsbridge() { [ "$(cat /proc/$pid1/comm 2>/dev/null)" = tsbridge ]; }
node_ip() { $LAB/tailscale --socket=$NODE_SOCK ip -4 2>/dev/null | grep '^100\.'; }
backend_running() { $LAB/tailscale --socket=$NODE_SOCK status --json 2>/dev/null | grep -q '"BackendState": "Running"'; }

# no ExtensionServiceConfig yet: `configuration: true` must keep the service waiting
start_runner
sleep 3
[ "$(state)" = Waiting ] || fail config-wait "ext-tailscale is $(state) without an ExtensionServiceConfig"
grep -q 'ext-tailscale Waiting: Waiting for ExtensionServiceConfig tailscale' "$RUNNER_LOG" ||
  fail config-wait "ext-tailscale does not wait for its ExtensionServiceConfig"
stop_runner
check config-wait "without an ExtensionServiceConfig ext-tailscale waits (depends: configuration)"

write_config "$NODE_KEY"
start_runner
wait_for 60 svc_running ||
  fail service-running "ext-tailscale is not Running (state: $(state))"
pid1=$(cut -d' ' -f2 /run/talos-runner/ext-tailscale)
wait_for 10 is_tsbridge || fail service-running "PID $pid1 is not tsbridge"
nspid=$(awk '/^NSpid:/ {print $NF}' /proc/$pid1/status)
[ "$nspid" = 1 ] || fail service-running "tsbridge is PID $nspid in its namespace, not 1"
for f in /etc/hosts /etc/resolv.conf; do
  cmp -s "/proc/$pid1/root$f" "$f" || fail service-running "the service does not see the node's $f"
done
check service-running "ext-tailscale Running, tsbridge is PID 1 of its own PID namespace (host PID $pid1)"

wait_for 240 backend_running || fail joined "the node's tailscaled is not Running"
NODE_IP=$(node_ip)
[ -n "$NODE_IP" ] || fail joined "the node has no 100.x address"
check joined "the node joined the tailnet with the ExtensionServiceConfig's key as node1 = $NODE_IP (control server $NODE_URL, a name from the node's /etc/hosts)"

# the key must not be on any command line, nor in any process's environment: tsbridge
# clears its own copy once it has read its configuration, so its children never see it
# either, even between fork and exec
for p in /proc/[0-9]*; do
  if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qF "$NODE_KEY"; then
    fail key-hidden "the auth key is on the command line of $(cat $p/comm) (${p#/proc/})"
  fi
  if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qF "$NODE_KEY"; then
    fail key-hidden "the auth key is in the environment of $(cat $p/comm) (${p#/proc/})"
  fi
done
# tsbridge's own: the name stays, the value is gone
tr '\0' '\n' <"/proc/$pid1/environ" | grep -q '^TS_AUTHKEY=$' ||
  fail key-hidden "tsbridge's environment has no cleared TS_AUTHKEY= entry"
grep -q "cleared the auth key's value" /var/log/ext-tailscale.log ||
  fail key-hidden "tsbridge did not log that it cleared the key from its environment"
# nor in the service's log or any file it can write (the machine config in /run/lab is Talos's)
found=$(grep -rlF "$NODE_KEY" /var /tmp /run/talos-runner /usr/local /system 2>/dev/null)
[ -z "$found" ] || fail key-hidden "the auth key is in: $found"
check key-hidden "the auth key is on no command line, in no process's environment (tsbridge's own cleared), log or state file"

# ------------------------------------------------------------------ pod -> tailnet
wait_for 60 in_ns pod ping -c1 -W2 "$PEER_IP" || fail pod-address "the pod cannot ping the peer at $PEER_IP"
# http_get ADDR: the body of http://ADDR:8080/ fetched from the pod (busybox-static's wget
# crashes in static glibc's resolver code, so plain nc)
http_get() { printf 'GET / HTTP/1.0\r\nHost: peer\r\n\r\n' | in_ns pod nc -w 10 "$1" 8080 2>&1 | tail -n1 | tr -d '\r'; }
body=$(http_get "$PEER_IP")
[ "$body" = "hello from the peer" ] || fail pod-address "unexpected answer: $body"
# 512 KiB in full-size segments: pod MTU 1500 through tailscale0's 1280 (MSS clamp)
big=$(printf 'GET /big HTTP/1.0\r\nHost: peer\r\n\r\n' | in_ns pod nc -w 20 "$PEER_IP" 8080 | sed '1,/^\r$/d' | md5sum | cut -d' ' -f1)
[ "$big" = "$(md5sum </srv/peer/big | cut -d' ' -f1)" ] || fail pod-address "a 512 KiB download from the peer arrived damaged or incomplete"
check pod-address "the pod pings $PEER_IP and fetches http://$PEER_IP:8080/ (also 512 KiB intact) over the tailnet"

# the answer's address (busybox nslookup: the server's own "Address:" line comes first)
resolve() { in_ns pod nslookup "peer.$DOMAIN" 100.100.100.100 2>/dev/null | awk '/^Name:/ {n=1} n && /^Address/ {print $NF; exit}'; }
resolves() { [ -n "$(resolve)" ]; }
wait_for 30 resolves ||
  fail pod-name "the pod cannot resolve peer.$DOMAIN at 100.100.100.100"
NAME_IP=$(resolve)
[ "$NAME_IP" = "$PEER_IP" ] || fail pod-name "peer.$DOMAIN resolves to '$NAME_IP', not $PEER_IP"
body=$(http_get "$NAME_IP")
[ "$body" = "hello from the peer" ] || fail pod-name "the pod cannot fetch from peer.$DOMAIN: $body"
check pod-name "the pod resolves peer.$DOMAIN via MagicDNS (100.100.100.100) to $NAME_IP and fetches from it"

# ------------------------------------------------------- what tsbridge put in the kernel
rules=$($IP rule; $IP -6 rule)
echo "$rules" | grep -E '^5100:.*to 192\.168\.10\.0/24 goto 5300 proto 116' >/dev/null ||
  fail guards "no lab-subnet guard (priority 5100, proto 116)"
echo "$rules" | grep -E '^5110:.*to 10\.244\.0\.0/16 goto 5300 proto 116' >/dev/null ||
  fail guards "no pod-CIDR guard (priority 5110, proto 116)"
echo "$rules" | grep -E '^5120:.*to 10\.96\.0\.0/12 goto 5300 proto 116' >/dev/null ||
  fail guards "no service-CIDR guard (priority 5120, proto 116)"
echo "$rules" | grep -E '^5300:.*nop proto 116' >/dev/null ||
  fail guards "no anchor (priority 5300 nop, proto 116) for the guards to jump to"
echo "$rules" | grep -q unresolved && fail guards "unresolved guard rules: $rules"
check guards "guard rules 5100/5110/5120 (lab, pod, service CIDRs -> goto the anchor 5300, proto 116) in place"

table=$($NFT list table inet tsbridge 2>&1) || fail nft "no nftables table inet tsbridge: $table"
echo "$table" | grep -q 'masquerade' || fail nft "inet tsbridge has no masquerade rule"
echo "$table" | grep -q 'maxseg size set rt mtu' || fail nft "inet tsbridge has no MSS clamp"
RULES_N=$( ($IP rule; $IP -6 rule) | grep -c 'proto 116')
NFT_N=$(echo "$table" | grep -c -E 'masquerade|maxseg')
check nft "table inet tsbridge with pod masquerade and MSS clamp"

# ------------------------- restart: always: the service dies (SIGKILL), Talos restarts it
OLD_PID=$(cut -d' ' -f2 /run/talos-runner/ext-tailscale)
log_lines=$(wc -l </var/log/ext-tailscale.log)
kill -KILL "$OLD_PID"
new_pid() { [ "$(state)" = Running ] && [ "$(cut -d' ' -f2 /run/talos-runner/ext-tailscale)" != "$OLD_PID" ]; }
wait_for 30 new_pid || fail restart "ext-tailscale was not restarted after SIGKILL (state: $(state))"
# The rules and the table were left in place: counting them proves nothing until the new
# instance has reconciled, and its first pass must adopt them (change nothing).
first_pass() { tail -n +"$((log_lines + 1))" /var/log/ext-tailscale.log | grep -m1 -E 'egress state (in sync|reconciled)|egress reconcile failed'; }
wait_for 60 first_pass || fail restart "the restarted service logged no reconcile pass"
case "$(first_pass)" in *"in sync"*) ;; *) fail restart "the restarted service's first pass did not adopt the state: $(first_pass)" ;; esac
wait_for 120 backend_running || fail restart "the node's tailscaled is not Running after the restart"
[ "$(node_ip)" = "$NODE_IP" ] || fail restart "the node's address changed after the restart"
wait_for 30 in_ns pod ping -c1 -W2 "$PEER_IP" || fail restart "the pod cannot reach the peer after the restart"
n=$( ($IP rule; $IP -6 rule) | grep -c 'proto 116')
[ "$n" = "$RULES_N" ] || fail restart "$n tsbridge rules after the restart, $RULES_N before: $( ($IP rule; $IP -6 rule) | grep 'proto 116')"
n=$($NFT list table inet tsbridge | grep -c -E 'masquerade|maxseg')
[ "$n" = "$NFT_N" ] || fail restart "$n masquerade/clamp rules after the restart, $NFT_N before"
check restart "killed with SIGKILL, restarted (restart: always), state adopted by the first pass, same address, pod reaches the peer, no duplicate rules"

# ------------------------------------- config change: stop, new config without key, start
log_lines=$(wc -l </var/log/ext-tailscale.log)
stop_runner
ms=$STOP_MS
svc_s=$(sed -n 's/.*task exited \([0-9.]*\) s after SIGTERM.*/\1/p' "$RUNNER_LOG" | tail -n 1)
# For the record (the console): how this stop went, in tsbridge's own words.
tail -n +"$((log_lines + 1))" /var/log/ext-tailscale.log |
  awk '!/source="tailscaled"/ || /got signal|flushing log/ { print "identity stop: " $0 }'
write_config "" repeated
grep -q TS_AUTHKEY "$MC" && fail identity "the new config still has the key"
log_lines=$(wc -l </var/log/ext-tailscale.log)
start_runner
wait_for 60 svc_running ||
  fail identity "ext-tailscale is not Running again (state: $(state))"
pid1=$(cut -d' ' -f2 /run/talos-runner/ext-tailscale)
wait_for 10 is_tsbridge || fail identity "PID $pid1 is not tsbridge"
levels=$(tr '\0' '\n' <"/proc/$pid1/environ" | grep '^TSBRIDGE_LOG_LEVEL=' | tr '\n' ' ')
[ "$levels" = "TSBRIDGE_LOG_LEVEL=warn TSBRIDGE_LOG_LEVEL=info " ] ||
  fail identity "the service's environment has '$levels', Talos passes both copies in order"
wait_for 180 backend_running || fail identity "the node's tailscaled is not Running after the restart without a key"
NEW_IP=$(node_ip)
[ "$NEW_IP" = "$NODE_IP" ] || fail identity "the node's address changed from $NODE_IP to '$NEW_IP'"
list=$(hs nodes list -o json)
nodes=$(echo "$list" | tr -d ' \n' | grep -o '"given_name":"node1[^"]*"' | wc -l)
[ "$nodes" = 1 ] || fail identity "headscale has $nodes nodes named node1: $list"
wait_for 60 in_ns pod ping -c1 -W2 "$PEER_IP" || fail identity "the pod cannot reach the peer after the restart"
tail -n +"$((log_lines + 1))" /var/log/ext-tailscale.log | grep -q ' INFO ' ||
  fail identity "no INFO lines with TSBRIDGE_LOG_LEVEL=warn then =info: the first value won"
check identity "after stop (service exited ${svc_s} s after SIGTERM, runner ${ms} ms), new ExtensionServiceConfig without TS_AUTHKEY, start: still node1 = $NODE_IP, pod reaches the peer; a repeated variable: last value wins"

# --------------------------------------- poweroff: Talos stops services, then powers off
# The runner stops the service as Talos does: SIGTERM to every process of the container at
# once (tailscaled too), so tailscaled exits while tsbridge tears down.
log_lines=$(wc -l </var/log/ext-tailscale.log)
stop_runner
ms=$STOP_MS
grep -q 'Sending SIGKILL to task ext-tailscale' "$RUNNER_LOG" && fail poweroff "the service needed SIGKILL"
[ "$ms" -lt 10000 ] || fail poweroff "stopping took ${ms} ms"
# tsbridge's own lines of the stop (not tailscaled's, which it forwards)
stop_log=$(tail -n +"$((log_lines + 1))" /var/log/ext-tailscale.log | grep -v 'source="tailscaled"')
echo "$stop_log" | grep -q 'shutting down' || fail poweroff "tsbridge logged no shutdown: $stop_log"
echo "$stop_log" | grep -E 'restarting|tailscaled started' &&
  fail poweroff "tailscaled was restarted during the stop"
exited=$(sed -n 's/.*task exited \([0-9.]*\) s after SIGTERM to \([0-9]*\) processes.*/\1 \2/p' "$RUNNER_LOG" | tail -n 1)
exit_s=${exited% *} exit_n=${exited#* }
[ -n "$exited" ] && [ "$exit_n" -ge 2 ] ||
  fail poweroff "SIGTERM went to ${exit_n:-no} processes, not to tsbridge and tailscaled: '$exited'"
# tsbridge's part of the stop, from its log's timestamps: removing its own state, and
# exiting once tailscaled is gone, each within 2 s. The whole stop is bounded by
# tailscaled's own shutdown, which under TCG emulation alone can take seconds (natively
# about 0.2 s: tests/shutdown_lab.rs asserts the whole stop within 2 s there).
at() { # at ERE: the first of tsbridge's stop lines matching ERE, as seconds of the day
  echo "$stop_log" | grep -E "$1" | head -n 1 |
    awk '{ split($1, d, "T"); split(d[2], t, ":"); sub("Z", "", t[3]); printf "%.3f", t[1] * 3600 + t[2] * 60 + t[3] }'
}
within() { # within A B LIMIT: B - A < LIMIT seconds (across midnight too)
  awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN { d = b - a; if (d < 0) d += 86400; exit !(a != "" && b != "" && d < l) }'
}
t_sig=$(at 'shutting down') t_own=$(at 'egress state removed')
t_ts=$(at 'tailscaled stopped|tailscaled exited as the service stops') t_end=$(at 'INFO stopped$')
within "$t_sig" "$t_own" 2 ||
  fail poweroff "tsbridge's own state was not removed within 2 s of its SIGTERM ($t_sig -> $t_own): $stop_log"
within "$t_ts" "$t_end" 2 ||
  fail poweroff "tsbridge did not exit within 2 s of tailscaled's exit ($t_ts -> $t_end): $stop_log"
left=""
for p in /proc/[0-9]*; do
  [ "$(readlink $p/ns/net)" = "$(readlink /proc/1/ns/net)" ] || continue
  case "$(cat $p/comm 2>/dev/null)" in tsbridge | tailscaled) left="$left $(cat $p/comm)(${p#/proc/})" ;; esac
done
[ -z "$left" ] || fail poweroff "processes left:$left"
rules=$($IP rule; $IP -6 rule)
echo "$rules" | grep -q 'proto 116' && fail poweroff "tsbridge rules left: $(echo "$rules" | grep 'proto 116')"
$NFT list table inet tsbridge >/dev/null 2>&1 && fail poweroff "table inet tsbridge left"
grep -q /usr/local/lib/containers/tailscale /proc/mounts && fail poweroff "the service's rootfs is still mounted"
check poweroff "SIGTERM to all $exit_n processes, exited after $exit_s s (own state removed after $(awk -v a="$t_sig" -v b="$t_own" 'BEGIN { printf "%.2f", b - a }') s; runner ${ms} ms), no restart, no tsbridge process, rule or nft table left"
echo "QEMU-TEST: all checks passed"
