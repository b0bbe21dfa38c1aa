#!/bin/sh
# What tests/vm/run.sh concludes from its logs, apart so that tests can feed it.
#
# usage: summary.sh results CONSOLE EXPECTED
#            CONSOLE holds "ok NAME" / "not ok NAME: why" lines, EXPECTED one
#            test name per line.  Prints each expected test that never
#            reported, then "P passed, F failed, M did not run (R of E expected
#            ran)"; exit status 0 only when every expected test passed.
#        summary.sh warnings LOG
#            prints the compiler's and modpost's warnings in a build log (not
#            make's own notes, such as its jobserver warning); exit status 0
#            when there is one.
set -eu

results() {
	awk -v expected="$2" '
	BEGIN {
		while ((getline name < expected) > 0)
			if (name != "")
				order[++n] = name
		for (i = 1; i <= n; i++)
			want[order[i]] = 1
	}
	/^ok / {
		if ($2 in want && state[$2] != "fail")
			state[$2] = "ok"
	}
	/^not ok / {
		name = $3
		sub(/:$/, "", name)
		if (name in want)
			state[name] = "fail"
		else
			extra++
	}
	END {
		for (i = 1; i <= n; i++) {
			if (state[order[i]] == "ok") {
				pass++
			} else if (state[order[i]] == "fail") {
				fail++
			} else {
				print "vm: " order[i] " did not run (no result line)"
				missing++
			}
		}
		printf "%d passed, %d failed, %d did not run (%d of %d expected ran)\n",
			pass, fail + extra, missing, pass + fail, n
		exit !(fail + extra == 0 && missing == 0 && pass > 0)
	}' "$1"
}

warnings() {
	# gcc/clang "file:line:col: warning:", the linker's "ld: warning:", modpost's "WARNING:"
	grep -E -e '^[^ :]+:[0-9]+(:[0-9]+)?: warning:' -e '^([^ ]*/)?[^ ]*ld: warning:' \
		-e '^WARNING: ' "$1"
}

usage() {
	echo "usage: summary.sh results CONSOLE EXPECTED | warnings LOG" >&2
	exit 2
}

case "${1:-}" in
results) [ $# -eq 3 ] || usage; results "$2" "$3" ;;
warnings) [ $# -eq 2 ] || usage; warnings "$2" ;;
*) usage ;;
esac
