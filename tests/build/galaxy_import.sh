#!/usr/bin/env bash
# Import the collection's Galaxy tarball with galaxy-importer, as Galaxy does on upload, and fail on any error or
# warning it reports.
#
# galaxy-importer runs from its own virtualenv (.build/galaxy-importer-venv, pinned by requirements/galaxy-importer.txt)
# because it pins its own ansible-core, ansible-lint and ansible-builder. It runs with its default configuration
# (ansible-doc and ansible-lint on, ansible-test off), in a clean environment (no ANSIBLE_* variables, no ansible.cfg
# of this checkout), from .build/galaxy-import, where it also writes importer_result.json.
#
# How the importer reports (galaxy_importer/main.py): its log goes to stdout, INFO lines bare and every other level
# as "LEVEL: message" at the start of a line (ansible-lint's findings become "WARNING: " lines). So the check is:
#   - the importer exits 0 and its last line is "Importer processing completed successfully";
#   - no stdout line starts with "WARNING: ", "ERROR: " or "CRITICAL: ";
#   - nothing on stderr: only other loggers (Python's last-resort handler prints their warnings bare), Python
#     warnings and tracebacks go there.
# Usage: tests/build/galaxy_import.sh (from anywhere; `make venv` first).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

requirements=requirements/galaxy-importer.txt
venv=.build/galaxy-importer-venv
out=.build/galaxy-import
success='Importer processing completed successfully'

if [[ ! -x .venv/bin/ansible-galaxy ]]; then
  echo "galaxy_import: .venv/bin/ansible-galaxy is missing (run make venv)" >&2
  exit 2
fi

# The importer's virtualenv, made again whenever the pinned requirements change.
if ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "galaxy_import: installing $requirements into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

rm -rf "$out"
mkdir -p "$out"
.venv/bin/ansible-galaxy collection build --output-path "$out" --force .
tarballs=("$out"/gpuvirt-fleet-*.tar.gz)
if [[ ${#tarballs[@]} -ne 1 || ! -f ${tarballs[0]} ]]; then
  echo "galaxy_import: expected one tarball in $out, found: ${tarballs[*]}" >&2
  exit 1
fi
tarball=$(basename "${tarballs[0]}")

# An empty [galaxy-importer] section: the defaults of galaxy_importer/config.py, whatever /etc/galaxy-importer holds.
printf '[galaxy-importer]\n' > "$out/galaxy-importer.cfg"

rc=0
(
  cd "$out"
  env -i HOME="$HOME" LANG=C.UTF-8 PATH="$repo/$venv/bin:/usr/local/bin:/usr/bin:/bin" \
    GALAXY_IMPORTER_CONFIG="$repo/$out/galaxy-importer.cfg" \
    "$repo/$venv/bin/python" -m galaxy_importer.main "$tarball"
) > "$out/importer.out" 2> "$out/importer.err" || rc=$?

problems=$(grep -E '^(WARNING|ERROR|CRITICAL): ' "$out/importer.out" || true)
last=$(tail -n 1 "$out/importer.out")

echo "galaxy_import: galaxy-importer's final lines ($out/importer.out):"
grep -v -E '^Loading [a-z_]+ ' "$out/importer.out" | tail -n 12
if [[ -s $out/importer.err ]]; then
  echo "galaxy_import: galaxy-importer wrote to stderr ($out/importer.err):"
  cat "$out/importer.err"
fi

status=0
if [[ $rc -ne 0 ]]; then
  echo "galaxy_import: FAILED: galaxy-importer exited $rc" >&2
  status=1
fi
if [[ -n $problems ]]; then
  echo "galaxy_import: FAILED: galaxy-importer reported $(wc -l <<< "$problems") warning or error line(s):" >&2
  echo "$problems" >&2
  status=1
fi
if [[ -s $out/importer.err ]]; then
  echo "galaxy_import: FAILED: galaxy-importer wrote to stderr" >&2
  status=1
fi
if [[ $last != "$success" ]]; then
  echo "galaxy_import: FAILED: the last line is not \"$success\"" >&2
  status=1
fi
if [[ $status -eq 0 ]]; then
  echo "galaxy_import: $tarball imports with no error and no warning (galaxy-importer $("$venv/bin/python" -m pip show galaxy-importer 2>/dev/null | sed -n 's/^Version: //p'))"
fi
exit "$status"
