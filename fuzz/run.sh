#!/bin/sh
# Runs every fuzz target in turn, niced, one job each, SECONDS seconds each
# (default 180), with the seed corpora of seed.py. Logs go to fuzz/logs/.
# -len_control=0: inputs may reach max_len at once; several parsers only
# reveal new edges on long inputs.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -u
cd "$(dirname "$0")"
secs=${1:-180}
[ $# -gt 0 ] && shift
targets=${*:-"pickle cifar idx csv tensorfile checkpoint train_config"}
mkdir -p logs
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -len_control=0 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
    echo "$t: exit $?"
done
