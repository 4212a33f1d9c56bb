#!/usr/bin/env bash
# Builds the Debian package and checks it and the systemd unit:
#   1. installs cargo-deb, lintian, dpkg-dev and systemd-analyze when missing;
#   2. `cargo deb` (release build without the demo feature, see
#      [package.metadata.deb] in Cargo.toml);
#   3. the package holds the binary, the unit and the conffile, and the
#      binary really is the gateway build (no `demo` subcommand);
#   4. lintian: any error fails, warnings are printed;
#   5. `systemd-analyze verify` on the unit: any complaint fails. verify
#      insists that ExecStart= names an existing executable, and
#      /usr/bin/hearthlink is not installed here, so it runs on a copy of
#      the unit whose ExecStart= points at the binary taken out of the .deb
#      (the unit in the package is not changed);
#   6. `systemd-analyze security --offline=true`: an overall exposure above
#      1.5 fails.
# Usage: bash scripts/check-packaging.sh   (from anywhere; needs root for
# apt-get only when a tool is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
MAX_EXPOSURE=1.5
UNIT=systemd/hearthlink.service

step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "check-packaging: FAIL: $*" >&2
  exit 1
}

step "tools"
apt_missing=()
command -v lintian >/dev/null 2>&1 || apt_missing+=(lintian)
command -v dpkg-shlibdeps >/dev/null 2>&1 || apt_missing+=(dpkg-dev)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing ${apt_missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (a few minutes, once per machine)"
  cargo install cargo-deb --locked --quiet
fi
echo "$(cargo deb --version), $(lintian --version), $(systemd-analyze --version | head -n1)"

step "cargo deb"
deb=$(cargo deb)
[ -f "$deb" ] || fail "cargo deb did not print the path of a .deb (got: $deb)"
echo "$deb: $(stat -c %s "$deb") bytes"

step "contents"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -c "$deb" | tee "$work/contents"
dpkg-deb -I "$deb"
for path in ./usr/bin/hearthlink ./etc/hearthlink/hearthlink.toml; do
  grep -q " $path\$" "$work/contents" || fail "$path is not in the package"
done
grep -Eq " \./(usr/)?lib/systemd/system/hearthlink\.service\$" "$work/contents" ||
  fail "the systemd unit is not in the package"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$work/conffiles"
grep -qx /etc/hearthlink/hearthlink.toml "$work/conffiles" ||
  fail "/etc/hearthlink/hearthlink.toml is not a conffile"
dpkg-deb -x "$deb" "$work/root"
bin="$work/root/usr/bin/hearthlink"
"$bin" --version
if "$bin" --help | grep -qw demo; then
  fail "the packaged binary has the demo (default-features = false was not applied)"
fi
unit_in_deb=$(find "$work/root" -name hearthlink.service -path '*systemd/system*')
cmp -s "$unit_in_deb" "$UNIT" || fail "the packaged unit differs from $UNIT"
echo "binary, unit and conffile present; the binary has no demo"

step "lintian"
lintian --fail-on error "$deb" || fail "lintian reported errors (above)"
echo "lintian: no errors"

step "systemd-analyze verify"
mkdir "$work/unit"
sed "s#^ExecStart=/usr/bin/hearthlink #ExecStart=$bin #" "$UNIT" >"$work/unit/hearthlink.service"
grep -q "^ExecStart=$bin " "$work/unit/hearthlink.service" ||
  fail "ExecStart= in $UNIT no longer starts with /usr/bin/hearthlink"
if ! verify=$(systemd-analyze verify "$work/unit/hearthlink.service" 2>&1) || [ -n "$verify" ]; then
  printf '%s\n' "$verify"
  fail "systemd-analyze verify complained"
fi
echo "verify: clean"

step "systemd-analyze security"
# --threshold is on the 0..100 scale; the printed level is that / 10.
threshold=$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 }')
status=0
security=$(systemd-analyze security --offline=true --threshold="$threshold" "$UNIT" 2>&1) || status=$?
printf '%s\n' "$security" | grep -v '✓' || true
exposure=$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for hearthlink.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level in the output of systemd-analyze security"
[ "$status" -eq 0 ] || fail "exposure $exposure is above $MAX_EXPOSURE"
echo "exposure: $exposure (at most $MAX_EXPOSURE)"

printf '\ncheck-packaging: OK: %s, exposure %s, %d s\n' "$(basename "$deb")" "$exposure" $((SECONDS - started))
