#!/usr/bin/env bash
# Installs the system pieces of the OHIF (DICOMweb) mode and its browser test:
#   Orthanc + its DICOMweb plugin (the local DICOMweb server), Debian's Chromium (the browser the
#   test drives), dcmtk (command-line DICOM inspection), curl, unshare/ip (the test's private
#   network namespace), Node.js/npm, the Inter font (fonts-inter: the viewer's font, served by
#   the server so the browser never asks Google Fonts), and the npm package
#   playwright-core into tests/browser/node_modules (the library that drives Chromium; it ships
#   no browser of its own, so nothing is downloaded besides registry packages).
#
# Idempotent and quick when everything is there: apt runs only for what is missing, `apt-get
# update` only when apt does not know a wanted package, and npm only when node_modules does not
# match package-lock.json. Run as root on Debian 12 (bookworm) or a derivative.
# Usage: bash scripts/install_system_deps.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_DIR="$ROOT/tests/browser"
ORTHANC_DICOMWEB_PLUGIN="/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

log() { echo "[install_system_deps] $*" >&2; }

missing=()
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ -e "$ORTHANC_DICOMWEB_PLUGIN" ] || missing+=(orthanc-dicomweb)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v dcmdump >/dev/null 2>&1 || missing+=(dcmtk)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# The viewer's Inter font, served locally by the server (lib/ohif_static.py) instead of Google Fonts.
[ -e /usr/share/fonts/opentype/inter/Inter-Regular.otf ] || missing+=(fonts-inter)

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]}; run this script as root to install them"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when apt does not know one of the wanted packages.
  for pkg in "${missing[@]}"; do
    policy_out="$(apt-cache policy "$pkg" 2>/dev/null || true)"
    if ! grep -q 'Candidate: [0-9]' <<<"$policy_out"; then
      log "apt-get update (apt does not know '$pkg' yet)"
      apt-get update -qq
      break
    fi
  done
  # Installing orthanc must not start the distribution's Orthanc service: it would listen on
  # every interface with its DICOM port open. Forbid service starts for this install only.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  log "apt-get install ${missing[*]}"
  status=0
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
  [ "$status" -eq 0 ] || { log "apt-get install failed ($status)"; exit "$status"; }
  # On a machine with systemd the unit may still be enabled for the next boot.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
else
  log "system packages present"
fi

# playwright-core, pinned by tests/browser/package-lock.json; a stamp of the lock file inside
# node_modules tells whether `npm ci` must run again.
LOCK_SUM="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -c1-16)"
STAMP="$BROWSER_DIR/node_modules/.afloc-lock-stamp"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$LOCK_SUM" ] || [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
  log "npm ci in tests/browser"
  (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$LOCK_SUM" > "$STAMP"
else
  log "playwright-core present"
fi
log "done"
