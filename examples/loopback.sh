#!/usr/bin/env bash
# Tether in real processes on this machine's loopback: a relay and two nodes with fresh
# keys; A sends messages, changes "networks" (127.0.0.1 -> 127.0.0.2) and sends more;
# both sides' status then shows the same session (same epoch, handshake count and
# PeerSecret) and B's `tether watch` every message once, in order. Everything runs in a
# temporary folder and is stopped on exit.
#
#   bash examples/loopback.sh
#
# Linux only (127.0.0.2 is a loopback address there without setup).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${TETHER:-}" ]; then
  cargo build -q --manifest-path "$root/Cargo.toml" -p tether-harness --bin tether
  TETHER="$root/target/debug/tether"
fi
dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

# Waits until FILE has a line starting with PREFIX, prints the value of KEY= in it.
ready() {
  local file=$1 prefix=$2 key=$3
  for _ in $(seq 1 300); do
    if line=$(grep -m1 "^$prefix" "$file" 2>/dev/null); then
      tr ' ' '\n' <<<"$line" | sed -n "s/^$key=//p"
      return
    fi
    sleep 0.1
  done
  echo "timed out waiting for $prefix in $file" >&2
  cat "${file%.out}.log" >&2 || true
  exit 1
}

echo "== keys"
relay_key=$("$TETHER" keygen --out relay.key 2>/dev/null)
"$TETHER" pair a.key b.key > pairing.txt
entry() { awk -v who="$1" '$0 ~ "^# --- in "who"'"'"'s config" {f=1; next} /^# --- in / {f=0} f' pairing.txt; }

echo "== relay"
{ printf 'key_file = "relay.key"\nlisten = "127.0.0.1:0"\ncontrol_socket = "relay.sock"\n'
  sed -n "s/^# in the relay's config, to admit both devices: //p" pairing.txt; } > relay.toml
"$TETHER" relay --config relay.toml > relay.out 2> relay.log & pids+=($!)
relay_addr=$(ready relay.out "tether relay ready:" listen)
echo "relay on $relay_addr"

node_config() { # name, extra peer address
  printf 'key_file = "%s.key"\nlisten = "127.0.0.1:0"\ncontrol_socket = "%s.sock"\n\n[relay]\naddr = "%s"\npublic_key = "%s"\n\n' \
    "$1" "$1" "$relay_addr" "$relay_key"
  entry "$1" | sed "s/^addresses = \[\].*/addresses = [$2]/"
}

echo "== nodes"
node_config a "" > a.toml
"$TETHER" node --config a.toml > a.out 2> a.log & pids+=($!)
a_addr=$(ready a.out "tether node ready:" listen)
node_config b "\"$a_addr\"" > b.toml
chmod 600 a.toml b.toml
"$TETHER" node --config b.toml > b.out 2> b.log & pids+=($!)
ready b.out "tether node ready:" listen > /dev/null
"$TETHER" watch --socket b.sock > b.watch & pids+=($!)
for _ in $(seq 1 100); do grep -q '"to":"Ready"' b.watch 2>/dev/null && break; sleep 0.1; done

echo "== messages, then A moves to 127.0.0.2 while they flow"
for i in 1 2 3; do "$TETHER" send --socket a.sock b "hello $i" > /dev/null; done
"$TETHER" status --socket a.sock
"$TETHER" migrate --socket a.sock --bind 127.0.0.2
for i in 4 5 6; do "$TETHER" send --socket a.sock b "hello $i" > /dev/null; done
for _ in $(seq 1 100); do [ "$(grep -c '"event":"delivered"' b.watch)" -ge 6 ] && break; sleep 0.1; done

echo "== after the move (same epoch, handshakes and PeerSecret; B reaches A at 127.0.0.2)"
"$TETHER" status --socket a.sock
"$TETHER" status --socket b.sock
echo "== what B's application received (tether watch)"
grep -E '"event":"(delivered|migration_completed)"' b.watch
