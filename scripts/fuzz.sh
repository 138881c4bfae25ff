#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for SECONDS (default 30) from
# its seed corpus (fuzz/corpus/<target>, copied: the run does not grow the committed
# corpus). Fails on any finding; findings land in fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Only stable Rust is needed: cargo-fuzz's nightly flags are allowed with
# RUSTC_BOOTSTRAP=1. FUZZ_SANITIZER (default none; address works too) picks the
# sanitizer, FUZZ_JOBS the build's jobs, FUZZ_DEV=1 an unoptimised build (~40 % of the
# build time; not for CI: backlog_replay's larger inputs exceed -timeout=20 unoptimised). See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-30}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# The same dependency versions as the main workspace (its lock, plus what only the fuzz
# crate uses, resolved here); fuzz/Cargo.lock is not tracked.
cp ../Cargo.lock Cargo.lock

# The in-process servers of rest_json / cloud_json put their data dirs under TMPDIR.
work="$(mktemp -d -t iotsync-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT
export TMPDIR="$work"

# The AMQP frame bounds checker (issue 15) is fuzzed once it is in the tree.
features=()
if [ -f ../crates/iotsync-server/src/channels/amqp/bounded.rs ]; then
    features=(--features bounded)
fi
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
    if [ "${#features[@]}" -eq 0 ]; then
        echo "fuzz: channels/amqp/bounded.rs is not in this tree: amqp_bounded skipped"
        mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -vx amqp_bounded)
    fi
fi

start=$(date +%s)
# Build flags shared by build and run (a difference would rebuild). cargo-fuzz builds
# with one codegen unit by default; 16 builds the whole dependency tree several times
# faster on 2 cores at a small cost in execs per second (FUZZ_CODEGEN_UNITS=1 for
# campaigns).
flags=(-s "$sanitizer" --codegen-units "${FUZZ_CODEGEN_UNITS:-16}" "${features[@]}")
[ "${FUZZ_DEV:-0}" = 1 ] && flags+=(--dev)
jobs=()
[ -n "${FUZZ_JOBS:-}" ] && jobs=(--jobs "$FUZZ_JOBS")
cargo fuzz build "${flags[@]}" "${jobs[@]}"
echo "fuzz: built ${#targets[@]} targets in $(( $(date +%s) - start )) s"

passed=0
failed=0
failures=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "artifacts/$t"
    if [ -d "corpus/$t" ]; then
        cp -r "corpus/$t/." "$work/corpus/$t/"
    fi
    log="$work/$t.log"
    set +e
    # malloc_limit_mb: no input of these sizes justifies one allocation of 512 MiB (the
    # AMQP decoders were seen allocating what a length field claims, issue 15).
    cargo fuzz run "${flags[@]}" "$t" "$work/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    # A run that died before its final stats has none: `|| true`, or set -e ends here.
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)
    units=$(find "$work/corpus/$t" -type f | wc -l)
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz: $t ok: ${execs:-?} execs in ${secs} s, cov ${cov:-?}, corpus $units"
    else
        failed=$((failed + 1))
        failures+=("$t")
        echo "fuzz: $t FAILED (exit $rc): ${execs:-?} execs; last lines of its log:"
        grep -v '^#' "$log" | tail -40
        ls -1 "artifacts/$t" | sed 's/^/fuzz:   artifact /'
    fi
done
echo "fuzz: total $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ] || echo "fuzz: findings in: ${failures[*]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
