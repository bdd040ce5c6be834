#!/usr/bin/env bash
# `make fuzz`: lints and builds the fuzz crate, then runs each target with
# libFuzzer for FUZZ_SECONDS (default 180) and prints, per target, the
# inputs run, inputs/s and the corpus size. Stable toolchain: cargo-fuzz
# with `-s none` (coverage instrumentation only, no sanitizer, so no -Z
# flag); installs cargo-fuzz if missing.
#
# Each input has a time limit (FUZZ_TIMEOUT s: a hang is a crash), RSS is
# capped (FUZZ_RSS_MB), and the targets' allocator aborts on an allocation
# over 64 MiB or 512 MiB live (fuzz/src/lib.rs). A crash stops that target,
# leaves the input in fuzz/artifacts/<target>/ and fails the run: fix it and
# commit the input to fuzz/regressions/<target>/, which `cargo test` replays
# (fuzz/checks/tests/corpora.rs).
#
# Knobs: FUZZ_SECONDS, FUZZ_TARGETS (space-separated, default all),
# FUZZ_TIMEOUT, FUZZ_RSS_MB, FUZZ_LINT=0 (skip fmt/clippy).
set -euo pipefail
cd "$(dirname "$0")"
CARGO="${CARGO:-cargo}"
seconds="${FUZZ_SECONDS:-180}"
timeout_s="${FUZZ_TIMEOUT:-10}"
rss_mb="${FUZZ_RSS_MB:-2048}"
targets="${FUZZ_TARGETS:-pgoutput request_head auth routes publish}"

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    "$CARGO" install --locked cargo-fuzz
fi
if [ "${FUZZ_LINT:-1}" != 0 ]; then
    "$CARGO" fmt --manifest-path Cargo.toml -- --check
    "$CARGO" clippy --manifest-path Cargo.toml --all-targets -- -D warnings
fi
"$CARGO" fuzz build -s none

declare -a rows
failed=0
for t in $targets; do
    mkdir -p "work/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "fuzz: $t for ${seconds}s" >&2
    start=$(date +%s.%N)
    set +e
    "$CARGO" fuzz run -s none "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    end=$(date +%s.%N)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(ls "work/$t" | wc -l)
    runs=${runs:-0}
    rate=$(sed -n "s/^stat::average_exec_per_sec: *//p" "$log" | tail -1)
    rate=${rate:-$(awk -v n="$runs" -v a="$start" -v b="$end" 'BEGIN { printf "%d", n / (b - a) }')}
    status=ok
    if [ "$rc" != 0 ]; then
        status="FAILED (rc $rc, see fuzz/$log)"
        failed=1
        tail -30 "$log" >&2
    fi
    rows+=("$(printf '%-14s %12s %10s %8s  %s' "$t" "$runs" "$rate" "$corpus" "$status")")
done

printf '%-14s %12s %10s %8s  %s\n' target inputs inputs/s corpus status
printf '%s\n' "${rows[@]}"
exit "$failed"
