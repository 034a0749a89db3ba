#!/usr/bin/env bash
# Issue 17 bench: whittle beside the onnx package on a 100,000-node graph and
# on a 2.62 GB external-data transformer, /usr/bin/time -v figures.
#
#   bash bench/big/run.sh graph        # long graph (bench/big/build/, ~4 MB)
#   bash bench/big/run.sh big [DIR]    # big model in DIR (default bench/big/build,
#                                      # gitignored; ~8 GB free needed there; every
#                                      # output deleted after its row, the model at
#                                      # the end unless KEEP=1)
#   PASSES="prune lowrank" bash bench/big/run.sh big   # a subset of the pass rows
#
# whittle is the dev binary (target/debug/whittle: whittle at opt-level 1,
# dependencies at opt-level 3, as Cargo.toml's [profile.dev] sets them).
# Columns: wall, user and sys CPU, peak RSS (/usr/bin/time -v), peak RSS over
# the weights' bytes, and weight bytes per wall second (big model).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${WHITTLE:-target/debug/whittle}
PY=${PYTHON:-.venv/bin/python}
WEIGHTS=0 # bytes of weights (big model), for the ratio and throughput columns
row() { # name, then the command
  local name=$1; shift
  local log; log=$(mktemp)
  /usr/bin/time -v "$@" >/dev/null 2>"$log" || { echo "| $name | FAILED: $(grep -m1 -i error "$log" | cut -c1-160) |"; rm -f "$log"; return 0; }
  local wall user sys rss
  wall=$(grep "Elapsed (wall" "$log" | awk '{print $NF}')
  user=$(grep "User time" "$log" | awk '{print $NF}')
  sys=$(grep "System time" "$log" | awk '{print $NF}')
  rss=$(grep "Maximum resident" "$log" | awk '{print $NF}')
  local extra=""
  if [ "$WEIGHTS" != 0 ]; then
    extra=$(python3 -c "
w, rss, wall = $WEIGHTS, $rss * 1024, '$wall'
s = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(':'))))
print(f' {rss / w:.2f}x | {w / 1e9 / max(s, 1e-9):.2f} GB/s |')")
  fi
  echo "| $name | $wall | $user | $sys | $((rss / 1024)) |$extra"
  rm -f "$log"
}
need_disk() { # folder, GB
  local free; free=$(df -BG --output=avail "$1" | tail -1 | tr -dc 0-9)
  if [ "$free" -lt "$2" ]; then echo "only ${free} GB free in $1 (need $2): stopping" >&2; exit 1; fi
}

case ${1:-graph} in
graph)
  B=bench/big/build; mkdir -p $B
  [ -f $B/long.onnx ] || $PY bench/big/gen_graph.py --nodes 100000 --out $B/long.onnx
  printf 'version: 1\npasses:\n  - eliminate-dead\n' > $B/dead.yaml
  echo "| step | wall (m:ss) | user s | sys s | peak RSS MiB |"; echo "|---|---|---|---|---|"
  row "whittle round trip (run roundtrip.yaml)" $W run configs/roundtrip.yaml -i $B/long.onnx -o $B/rt.onnx
  row "whittle dump" $W dump $B/long.onnx
  row "whittle inspect" $W inspect $B/long.onnx
  row "whittle run eliminate-dead" $W run $B/dead.yaml -i $B/long.onnx -o $B/dead.onnx
  row "onnx load + save + checker" $PY bench/big/onnx_peer.py graph $B/long.onnx $B/py.onnx
  $PY bench/big/onnx_peer.py graph $B/long.onnx $B/py.onnx
  rm -f $B/rt.onnx $B/dead.onnx $B/py.onnx
  ;;
big)
  D=${2:-bench/big/build}; mkdir -p $D
  if [ ! -f $D/big.onnx ]; then need_disk $D 8; $PY bench/big/gen_transformer.py --out $D/big.onnx; fi
  WEIGHTS=$(stat -c %s $D/big.onnx.data)
  printf 'version: 1\npasses:\n  - prune: { granularity: unstructured, method: magnitude, sparsity: 0.5 }\n' > $D/prune.yaml
  printf 'version: 1\npasses:\n  - low-rank: { rank: 64, data_aware: false }\n' > $D/lowrank.yaml
  printf 'version: 1\npasses:\n  - quantize: { calibration: { samples: 2 } }\n' > $D/quantize.yaml
  printf 'version: 1\npasses:\n  - quantize: { activations: { scaling: dynamic } }\n' > $D/quantize_dynamic.yaml
  echo "load: $(uptime)"
  echo "| step | wall (m:ss) | user s | sys s | peak RSS MiB | RSS / weights | weights / wall |"
  echo "|---|---|---|---|---|---|---|"
  need_disk $D 8
  row "cp + sync of the side file (the machine's ceiling)" sh -c "cp $D/big.onnx.data $D/cp.data && sync $D/cp.data"; rm -f $D/cp.data
  need_disk $D 8
  row "whittle round trip" $W run configs/roundtrip.yaml -i $D/big.onnx -o $D/out.onnx; rm -f $D/out.onnx*
  need_disk $D 8
  row "onnx.load + onnx.save (external data)" $PY bench/big/onnx_peer.py external $D/big.onnx $D/py.onnx; rm -f $D/py.onnx*
  for p in ${PASSES:-prune lowrank quantize quantize_dynamic}; do
    need_disk $D 8
    row "whittle $p" $W run $D/$p.yaml -i $D/big.onnx -o $D/out.onnx; rm -f $D/out.onnx*
  done
  echo "load: $(uptime)"
  [ "${KEEP:-0}" = 1 ] || rm -f $D/big.onnx $D/big.onnx.data
  ;;
esac
