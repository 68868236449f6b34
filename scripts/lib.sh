# shellcheck shell=bash
# Shared steps of scripts/lab-up and scripts/test-all: each installs only
# what is missing, so a second run reuses the image and the virtualenv.
set -euo pipefail

KIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KIT_CACHE=${KIT_CACHE:-/var/cache/celery-kit}
# The Debian release of the lab's hosts: bookworm (12) or trixie (13), or a
# mixed lab as in a rolling OS upgrade (molecule/shared/create.yml picks each
# host's image): mixed puts the servers (brokers, log servers) on 13 and the
# app hosts on 12, mixed-reverse the other way round.
KIT_LAB_RELEASE=${KIT_LAB_RELEASE:-bookworm}
case "$KIT_LAB_RELEASE" in
  bookworm|trixie) KIT_LAB_IMAGE=${KIT_LAB_IMAGE:-celery-kit/debian:$KIT_LAB_RELEASE} ;;
  mixed|mixed-reverse)
    if [ -n "${KIT_LAB_IMAGE:-}" ]; then
      echo "error: KIT_LAB_IMAGE=$KIT_LAB_IMAGE names one image; a $KIT_LAB_RELEASE lab uses both releases' images" >&2
      exit 2
    fi
    KIT_LAB_IMAGE= ;;
  *) echo "error: KIT_LAB_RELEASE must be bookworm, trixie, mixed or mixed-reverse (got '$KIT_LAB_RELEASE')" >&2; exit 2 ;;
esac
export KIT_LAB_RELEASE KIT_LAB_IMAGE

kit_log() { printf '\n==> %s\n' "$*" >&2; }

kit_need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (or with sudo): Docker and debootstrap need it" >&2
    exit 1
  fi
}

# Debian packages the controller needs: Docker's engine, debootstrap for the
# base image, venv for the pinned Python tools, openssl for the tests
# and shellcheck for scripts/lint.
kit_ensure_apt() {
  local missing=()
  for cmd_pkg in dockerd:docker.io debootstrap:debootstrap openssl:openssl \
                 rsync:rsync shellcheck:shellcheck; do
    command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg#*:}")
  done
  python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ "${#missing[@]}" -gt 0 ]; then
    kit_log "Installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

kit_ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  kit_log "Starting dockerd"
  mkdir -p /var/log
  nohup /usr/sbin/dockerd >/var/log/celery-kit-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "error: dockerd did not start; see /var/log/celery-kit-dockerd.log" >&2
  exit 1
}

# The virtualenv is keyed by the hash of the pinned requirements, so a fresh
# clone (CI) reuses it and a change of pins builds a new one.
kit_ensure_venv() {
  local hash
  hash=$(cat "$KIT_ROOT/requirements/controller.txt" "$KIT_ROOT/requirements/constraints.txt" \
         | sha256sum | cut -c1-12)
  KIT_VENV=${KIT_VENV:-$KIT_CACHE/venv-$hash}
  # .kit-created is written right after `python3 -m venv`, .kit-complete
  # last, so an interrupted install is redone. Only a virtualenv the kit
  # created is ever removed: KIT_VENV may name a directory of the user's.
  if [ ! -f "$KIT_VENV/.kit-complete" ]; then
    if [ -e "$KIT_VENV" ] && [ ! -f "$KIT_VENV/.kit-created" ] \
       && [ -n "$(ls -A "$KIT_VENV" 2>/dev/null)" ]; then
      echo "error: KIT_VENV=$KIT_VENV exists and the kit did not create it;" \
           "the kit will not remove it. Unset KIT_VENV or name an empty or new directory." >&2
      exit 2
    fi
    kit_log "Creating the controller virtualenv in $KIT_VENV"
    if [ -f "$KIT_VENV/.kit-created" ]; then rm -rf "$KIT_VENV"; fi
    python3 -m venv "$KIT_VENV"
    touch "$KIT_VENV/.kit-created"
    "$KIT_VENV/bin/pip" install -q -r "$KIT_ROOT/requirements/controller.txt" \
      -c "$KIT_ROOT/requirements/constraints.txt"
    touch "$KIT_VENV/.kit-complete"
  fi
  export PATH="$KIT_VENV/bin:$PATH"
  export KIT_VENV
}

kit_ensure_image() {
  case "$KIT_LAB_RELEASE" in
    mixed|mixed-reverse)
      KIT_LAB_RELEASE=bookworm KIT_LAB_IMAGE=celery-kit/debian:bookworm kit_ensure_image
      KIT_LAB_RELEASE=trixie KIT_LAB_IMAGE=celery-kit/debian:trixie kit_ensure_image
      return 0 ;;
  esac
  if docker image inspect "$KIT_LAB_IMAGE" >/dev/null 2>&1; then return 0; fi
  "$KIT_ROOT/scripts/build-image"
}

kit_bootstrap() {
  kit_need_root
  kit_ensure_apt
  kit_ensure_dockerd
  kit_ensure_venv
  kit_ensure_image
  cd "$KIT_ROOT"
}
