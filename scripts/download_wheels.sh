#!/usr/bin/env bash
# Downloads, here, the wheels an offline accelerator machine needs beyond what it already has (jax with CUDA, flax,
# optax, orbax-checkpoint, jaxtyping, absl-py, etils and their dependencies): this project's other dependencies and
# the gymnax extra, for that machine's Python, into .whl/ (git-ignored), with .whl/requirements.txt naming them.
# scripts/accelerator_check.sh installs them there with pip's offline mode.
#
#   bash scripts/download_wheels.sh            # for this machine's Python version
#   bash scripts/download_wheels.sh 3.12       # for a machine with Python 3.12
#
# PYTHON: the interpreter whose pip resolves and downloads (default python3). PRESENT: space-separated names the
# target machine also has already (skipped). The folder must stay under 64 MiB (the size a device call carries).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYVER=${1:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
OUT=${OUT:-.whl}
LIMIT_MIB=64
BASE="jax flax optax orbax-checkpoint jaxtyping absl-py etils[epath] ${PRESENT:-}"
# This project's dependencies (pyproject.toml) and its gymnax extra.
WANT=$($PYTHON - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(" ".join(project["dependencies"] + project["optional-dependencies"]["gymnax"]))
EOF
)
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform manylinux1_x86_64 --platform any)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
resolve() {  # $1: report file, rest: requirements → pip's resolution for the target, nothing installed
  local report=$1; shift
  $PYTHON -m pip install -q --dry-run --ignore-installed --target "$tmp/target" "${TARGET[@]}" --report "$report" "$@"
}
# shellcheck disable=SC2086
resolve "$tmp/want.json" $WANT $BASE
# shellcheck disable=SC2086
resolve "$tmp/base.json" $BASE
$PYTHON - "$tmp/want.json" "$tmp/base.json" > "$tmp/requirements.txt" <<'EOF'
import json, re, sys
def pins(path):
  items = json.load(open(path))["install"]
  return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}
want, base = pins(sys.argv[1]), pins(sys.argv[2])
for name in sorted(set(want) - set(base)):
  print(f"{name}=={want[name]}")
EOF
mkdir -p "$OUT"
rm -f "$OUT"/*.whl
$PYTHON -m pip download -q --no-deps "${TARGET[@]}" -d "$OUT" -r "$tmp/requirements.txt"
cp "$tmp/requirements.txt" "$OUT/requirements.txt"
size=$(du -sm "$OUT" | cut -f1)
echo "$OUT: $(ls "$OUT"/*.whl | wc -l) wheels for Python $PYVER, ${size} MiB:"
sed 's/^/  /' "$OUT/requirements.txt"
if [ "$size" -ge "$LIMIT_MIB" ]; then
  echo "error: $OUT is ${size} MiB, over the ${LIMIT_MIB} MiB a device call carries; name packages the machine has in PRESENT" >&2
  exit 1
fi
