# scripts/out-folder.sh: owns how a check script claims the folder it
# empties. Sourced, not run. Only a folder the script made is emptied: one
# named by mistake (a run folder, a project, a home folder, a file) is
# refused, not deleted.

# A path as given from the folder the script was run in (call before `cd`).
abs_path() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# claim_out NAME VAR DEFAULT: sets $out to $VAR as a folder (DEFAULT when
# unset) and exits 2 when it is a file, or a folder other than DEFAULT that
# holds files without NAME's mark. Call before the script's own `cd`.
claim_out() {
    local name=$1 var=$2 default=$3
    out=$(abs_path "${!var:-$default}")
    if [[ -e "$out" && ! -d "$out" ]]; then
        echo "$name: $out is a file, not a folder; pass $var=<a new folder>" >&2
        exit 2
    fi
    if [[ "$out" != "$default" && -d "$out" && ! -f "$out/.$name" && -n "$(ls -A "$out")" ]]; then
        echo "$name: $out holds files this script did not write; pass $var=<a new folder>" >&2
        exit 2
    fi
}

# mark_out NAME: makes $out and marks it as NAME's to empty next time.
mark_out() {
    mkdir -p "$out"
    touch "$out/.$1"
}
