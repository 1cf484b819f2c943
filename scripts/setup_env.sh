#!/usr/bin/env bash
# One-command environment: creates .venv, installs the pinned dependencies (torch, OpenCV, rosbags,
# ROS 2 Kilted from its PyPI wheels, ...), builds the tf2_msgs interface into it and installs
# posenet_ros in editable mode. Re-running when nothing changed takes a second or two (stamp file).
# Nothing is fetched from outside the package registries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${POSENET_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.posenet_setup_stamp"
log() { printf '[setup] %s\n' "$*" >&2; }

# The inputs whose change requires a reinstall.
hash_inputs() {
  cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" \
      "$ROOT"/ros_interfaces/tf2_msgs/msg/*.msg "$ROOT/ros_interfaces/tf2_msgs/CMakeLists.txt" \
    | sha256sum | cut -d' ' -f1
}
WANT="$(hash_inputs)"
# Up to date also means this checkout is the posenet_ros the venv imports (a venv shared with
# another checkout, or an uninstall, would otherwise run the wrong code, or none, in child processes).
installed_here() {
  (cd / && "$VENV/bin/python" -c 'import posenet_ros, sys; print(posenet_ros.__path__[0])' \
     2>/dev/null) | grep -qx "$ROOT/posenet_ros"
}
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/python" ]] && installed_here; then
  log "environment up to date ($VENV)"
  exit 0
fi

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
log "installing pinned dependencies (torch is large: first run takes a few minutes)"
"${PIP[@]}" install --progress-bar off -q -r "$ROOT/requirements/core.txt" \
  -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/ros-build.txt" \
  -r "$ROOT/requirements/test.txt" 2>&1 \
  | grep -v "^WARNING: Location" >&2 || true
# grep above hides the noisy find-links warnings; check the install really succeeded.
"$VENV/bin/python" -c 'import torch, torchvision, cv2, rosbags, transforms3d, amcl' \
  || { log "dependency install failed"; exit 1; }

# --- tf2_msgs: not on PyPI; build the one-message interface package into the venv -------------
if ! "$VENV/bin/python" -c 'import tf2_msgs.msg' 2>/dev/null \
    || [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  log "building tf2_msgs interface package into the venv"
  SITE_INC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NP_INC="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
  # The wheels' exported CMake files point at the wheel factory's Python: rewrite to this venv.
  { grep -rl '/opt/python/cp311-cp311' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } \
    | while read -r f; do
        sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$SITE_INC#g" \
               -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
               "$f"
      done
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  cmake -S "$ROOT/ros_interfaces/tf2_msgs" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DCMAKE_PREFIX_PATH="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release >"$BUILD/configure.log" 2>&1 \
    || { cat "$BUILD/configure.log" >&2; log "tf2_msgs configure failed"; exit 1; }
  cmake --build "$BUILD" -j2 >"$BUILD/build.log" 2>&1 \
    || { tail -50 "$BUILD/build.log" >&2; log "tf2_msgs build failed"; exit 1; }
  cmake --install "$BUILD" >/dev/null
  # Generated Python lands in <venv>/local/lib/python3.11/dist-packages on Debian-style layouts.
  PURELIB="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  for cand in "$VENV"/local/lib/python3*/dist-packages "$VENV"/lib/python3*/dist-packages; do
    if [[ -d "$cand/tf2_msgs" ]]; then echo "$cand" > "$PURELIB/tf2_msgs_build.pth"; fi
  done
fi

log "installing posenet_ros (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" 2>&1 \
  | grep -v "^WARNING: Location" >&2 || true
"$VENV/bin/python" -c 'import posenet_ros' || { log "posenet_ros install failed"; exit 1; }
echo "$WANT" > "$STAMP"
log "done in $(( $(date +%s) - start )) s ($VENV)"
