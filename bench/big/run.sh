#!/usr/bin/env bash
# Issue 17 bench: whittle beside the onnx package on a 100,000-node graph and
# on a 2.62 GB external-data transformer, /usr/bin/time -v figures.
#
#   bash bench/big/run.sh graph        # long graph (bench/big/build/, ~4 MB)
#   bash bench/big/run.sh big [DIR]    # big model in DIR (default /dev/shm/whittle-big;
#                                      # ~8 GB free needed there; deleted after)
#
# whittle is the dev binary (target/debug/whittle: whittle at opt-level 1,
# dependencies at opt-level 3, as Cargo.toml's [profile.dev] sets them).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${WHITTLE:-target/debug/whittle}
PY=${PYTHON:-.venv/bin/python}
row() { # name, then the command
  local name=$1; shift
  local log; log=$(mktemp)
  /usr/bin/time -v "$@" >/dev/null 2>"$log" || { echo "| $name | FAILED: $(tail -3 "$log" | tr '\n' ' ') |"; rm -f "$log"; return; }
  local wall user sys rss
  wall=$(grep "Elapsed (wall" "$log" | awk '{print $NF}')
  user=$(grep "User time" "$log" | awk '{print $NF}')
  sys=$(grep "System time" "$log" | awk '{print $NF}')
  rss=$(grep "Maximum resident" "$log" | awk '{print $NF}')
  echo "| $name | $wall | $user | $sys | $((rss / 1024)) |"
  rm -f "$log"
}
header() { echo "| step | wall (m:ss) | user s | sys s | peak RSS MiB |"; echo "|---|---|---|---|---|"; }

case ${1:-graph} in
graph)
  B=bench/big/build; mkdir -p $B
  [ -f $B/long.onnx ] || $PY bench/big/gen_graph.py --nodes 100000 --out $B/long.onnx
  printf 'version: 1\npasses:\n  - eliminate-dead\n' > $B/dead.yaml
  header
  row "whittle round trip (run roundtrip.yaml)" $W run configs/roundtrip.yaml -i $B/long.onnx -o $B/rt.onnx
  row "whittle dump" $W dump $B/long.onnx
  row "whittle inspect" $W inspect $B/long.onnx
  row "whittle run eliminate-dead" $W run $B/dead.yaml -i $B/long.onnx -o $B/dead.onnx
  row "onnx load + save + checker" $PY bench/big/onnx_peer.py graph $B/long.onnx $B/py.onnx
  $PY bench/big/onnx_peer.py graph $B/long.onnx $B/py.onnx
  rm -f $B/rt.onnx $B/dead.onnx $B/py.onnx
  ;;
big)
  D=${2:-/dev/shm/whittle-big}; mkdir -p $D
  [ -f $D/big.onnx ] || $PY bench/big/gen_transformer.py --out $D/big.onnx
  printf 'version: 1\npasses:\n  - prune: { granularity: unstructured, method: magnitude, sparsity: 0.5 }\n' > $D/prune.yaml
  printf 'version: 1\npasses:\n  - low-rank: { rank: 64, data_aware: false }\n' > $D/lowrank.yaml
  printf 'version: 1\npasses:\n  - quantize: { calibration: { samples: 2 } }\n' > $D/quantize.yaml
  header
  row "whittle round trip" $W run configs/roundtrip.yaml -i $D/big.onnx -o $D/out.onnx; rm -f $D/out.onnx*
  row "onnx.load + onnx.save (external data)" $PY bench/big/onnx_peer.py external $D/big.onnx $D/py.onnx; rm -f $D/py.onnx*
  for p in ${PASSES:-prune lowrank quantize}; do
    row "whittle $p" $W run $D/$p.yaml -i $D/big.onnx -o $D/out.onnx; rm -f $D/out.onnx*
  done
  ;;
esac
