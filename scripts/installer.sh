# Sourced by setup.sh and lock.sh. `install_into VENV ARGS...` runs `pip install ARGS` for the virtualenv
# VENV with uv when uv can be had (several times faster than pip; README "Versions"), else with VENV's
# own pip; INSTALLER=pip forces pip.
UV_VERSION=0.13.9  # the uv the install was measured and tested with

install_into() {
  local venv=$1 uv=$1/.uv/bin/uv
  shift
  if [ "${INSTALLER:-uv}" = uv ] && { [ -x "$uv" ] || _bootstrap_uv "$venv"; }; then
    # Bytecode now, as pip writes it: where PYTHONDONTWRITEBYTECODE is set (as on these machines), every
    # start would compile torch and transformers again (5 s on 2 cores).
    "$uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" $(_pip_locations "$venv") "$@"
  else
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
      2> >(grep -v "^WARNING: Location" >&2)
  fi
}

# uv goes beside the packages, not among them (.venv/.uv), so that `pip freeze` shows only the project's.
_bootstrap_uv() {
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check --target "$1/.uv" "uv==$UV_VERSION" \
    >/dev/null 2>&1 && return
  echo "uv $UV_VERSION could not be installed; installing with pip instead (slower)" >&2
  rm -rf "$1/.uv"
  return 1
}

# uv does not read pip's configuration: hand it pip's find-links (where a machine keeps the torch CPU wheel)
# and index URL. Not pip's extra indexes: uv takes a package from the first index that has it, and a
# partial local mirror would hide PyPI's other releases of that package.
_pip_locations() {
  "$1/bin/python" -m pip config list 2>/dev/null \
    | sed -nE "s/^[^=]*\.(find-links|index-url)='(.*)'$/\1 \2/p" \
    | while read -r key values; do for value in $values; do echo "--$key $value"; done; done | sort -u
}
