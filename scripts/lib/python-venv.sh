# shellcheck shell=bash
# Sourced by the check scripts. `python_venv DIR REQUIREMENTS [PIP_ARGS...]` creates a venv at DIR
# once and installs the pinned REQUIREMENTS (and any further pip arguments, such as a local
# package) into it; the scripts then call DIR/bin/python.
python_venv() {
	local venv="$1" reqs="$2"
	shift 2
	[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
	"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" "$@"
}
