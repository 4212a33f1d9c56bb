#!/usr/bin/env bash
# The soak (issue 16; not in CI): the release daemon for SOAK_SECONDS
# (default 3600) at SOAK_RATE msg/s (default 2000) with link churn, cloud
# drops and SIGHUPs (tests/soak.rs), sampled every 10 s. Writes
# target/soak/soak.csv, target/soak/summary.md and docs/soak.png (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt-get install -y -qq mosquitto
command -v gnuplot >/dev/null 2>&1 || apt-get install -y -qq gnuplot-nox
export SOAK_SECONDS="${SOAK_SECONDS:-3600}" SOAK_RATE="${SOAK_RATE:-2000}"
cargo test --release --test soak -- --ignored --nocapture

csv=target/soak/soak.csv
awk -F, -v secs="$SOAK_SECONDS" -v rate="$SOAK_RATE" '
NR == 2 { r0 = $2; f0 = $3; t0 = $4 }
NR > 1 {
  if (min_r == "" || $2 < min_r) min_r = $2; if ($2 > max_r) max_r = $2
  if (min_f == "" || $3 < min_f) min_f = $3; if ($3 > max_f) max_f = $3
  if (min_t == "" || $4 < min_t) min_t = $4; if ($4 > max_t) max_t = $4
  last = $0; rl = $2; fl = $3; tl = $4; pub = $5; fr = $6; li = $7; dr = $8; hu = $9; n++
}
END {
  printf "Soak: %d s at %d msg/s, %d samples (every 10 s).\n\n", secs, rate, n
  printf "| | first | min | max | last |\n|---|---|---|---|---|\n"
  printf "| RSS (MiB) | %.1f | %.1f | %.1f | %.1f |\n", r0/1024, min_r/1024, max_r/1024, rl/1024
  printf "| open descriptors | %d | %d | %d | %d |\n", f0, min_f, max_f, fl
  printf "| threads | %d | %d | %d | %d |\n", t0, min_t, max_t, tl
  printf "\nPublished %d messages; the cloud read %d frames; %d links granted (each revoked 30 s later), %d cloud drops, %d SIGHUPs.\n", pub, fr, li, dr, hu
}' "$csv" | tee target/soak/summary.md

gnuplot <<GP
set terminal pngcairo size 900,500 noenhanced
set output 'docs/soak.png'
set datafile separator ','
set key autotitle columnhead left top
set xlabel 'time (s)'
set ylabel 'RSS (MiB)'
set y2label 'descriptors, threads'
set y2tics
set ytics nomirror
set title 'hearthlink soak: ${SOAK_RATE} msg/s, link churn, cloud drops, SIGHUPs'
plot '$csv' using 1:(\$2/1024) with lines title 'RSS (MiB)', \
     '' using 1:3 axes x1y2 with lines title 'open descriptors', \
     '' using 1:4 axes x1y2 with lines title 'threads'
GP
echo "soak: docs/soak.png written"
