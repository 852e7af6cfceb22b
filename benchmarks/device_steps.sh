# Sourced by the device scripts (device_check.sh, device_train.sh, device_finetune.sh) after they set
# OUT: runs from the repository root with ndd from src/, a scratch folder $work removed at exit,
# `step` and `need`.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, say how it ended
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local code=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $code after $((SECONDS - start)) s"
}

need() {  # need DIR: stop here (exit 1) unless DIR exists: the data the script carries is missing
    [ -d "$1" ] && return
    echo "$1 is missing (see the top of this script)"
    exit 1
}
